"""Configuration: parsed once, and a bad value stops start-up with one line."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from chat.settings import Settings, SettingsError, load_settings


def test_defaults_mean_one_node_in_memory():
    settings = load_settings({})
    assert settings.redis_url is None
    assert settings.mode == "memory"
    assert settings.redis_mode == "socketio"
    assert settings.redis_channel == "chat:messages"
    assert settings.max_message_length == 2000
    assert settings.server_id  # the host name
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6390/0", "rediss://user:pw@redis.example:6380", "unix:///tmp/redis.sock",
])
def test_accepted_redis_urls(url):
    settings = load_settings({"REDIS_URL": url, "REDIS_MODE": "pubsub"})
    assert settings.redis_url == url
    assert settings.mode == "pubsub"


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_cors_origins_parsed():
    settings = load_settings({"CORS_ORIGINS": "https://a.example, http://b.example:8080/"})
    assert settings.cors_origins == ("https://a.example", "http://b.example:8080")
    assert load_settings({"CORS_ORIGINS": "*"}).cors_origins == ("*",)


@pytest.mark.parametrize(("env", "variable", "accepts"), [
    ({"REDIS_MODE": "signalr"}, "REDIS_MODE", "socketio, pubsub"),
    ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL", "redis://"),
    ({"REDIS_URL": "redis://:notaport"}, "REDIS_URL", "redis://"),
    ({"REDIS_URL": "redis://"}, "REDIS_URL", "no host"),
    ({"REDIS_URL": "unix://"}, "REDIS_URL", "socket path"),
    ({"MAX_MESSAGE_LENGTH": "lots"}, "MAX_MESSAGE_LENGTH", "whole number"),
    ({"MAX_MESSAGE_LENGTH": "0"}, "MAX_MESSAGE_LENGTH", ">= 1"),
    ({"MESSAGE_RATE": "nan"}, "MESSAGE_RATE", "number"),
    ({"PORT": "70000"}, "PORT", "65535"),
    ({"PORT": "http"}, "PORT", "whole number"),
    ({"PORT": "0"}, "PORT", ">= 1"),
    ({"HOST": "not a host"}, "HOST", "IP address"),
    ({"HOST": "999.1.1.1"}, "HOST", "IP address"),
    ({"WEB_DIR": "/nonexistent"}, "WEB_DIR", "index.html"),
    ({"REDIS_URL": "redis://localhost:6379/99"}, "REDIS_URL", "0 to 15"),
    ({"REDIS_URL": "redis://localhost:6379/abc"}, "REDIS_URL", "0 to 15"),
    ({"CORS_ORIGINS": "example.com"}, "CORS_ORIGINS", "origins"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL", "DEBUG"),
    ({"SERVER_ID": "x" * 65}, "SERVER_ID", "64"),
    ({"MAX_MESSAGE_LENGTH": "100000"}, "MAX_FRAME_BYTES", "MAX_MESSAGE_LENGTH"),
    ({"HISTORY_LENGTH": "0"}, "HISTORY_LENGTH", ">= 1"),
    ({"HISTORY_ON_JOIN": "-1"}, "HISTORY_ON_JOIN", ">= 0"),
    ({"HISTORY_LENGTH": "10", "HISTORY_ON_JOIN": "50"}, "HISTORY_ON_JOIN", "HISTORY_LENGTH=10"),
    ({"PRESENCE_TTL": "0.5"}, "PRESENCE_TTL", ">= 1"),
    ({"REDIS_MAX_CONNECTIONS": "1"}, "REDIS_MAX_CONNECTIONS", ">= 2"),
    ({"ROOMS_PER_MINUTE": "0"}, "ROOMS_PER_MINUTE", ">= 1"),
    ({"MAX_ROOMS": "many"}, "MAX_ROOMS", "whole number"),
    ({"HISTORY_MAX_BYTES": "many"}, "HISTORY_MAX_BYTES", "whole number"),
    ({"HISTORY_MAX_BYTES": "2000"}, "HISTORY_MAX_BYTES", "MAX_FRAME_BYTES=32768"),
    ({"MAX_QUEUED_BYTES": "512"}, "MAX_QUEUED_BYTES", ">= 1024"),
    ({"MAX_QUEUED_BYTES": "100000"}, "MAX_QUEUED_BYTES", "HISTORY_MAX_BYTES"),
    ({"CATCH_UP_EVERY": "-1"}, "CATCH_UP_EVERY", ">= 0"),
])
def test_bad_value_names_the_variable(env, variable, accepts):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(variable + "=") or variable in message.split(" ")[0]
    assert accepts in message
    assert "\n" not in message


@pytest.mark.parametrize(("env", "variable"), [
    ({"REDIS_MODE": "bogus"}, "REDIS_MODE"),
    ({"REDIS_URL": "mysql://x"}, "REDIS_URL"),
    ({"REDIS_URL": "redis+cluster://127.0.0.1:7000"}, "REDIS_URL"),  # socketio mode
    ({"MAX_MESSAGE_LENGTH": "ten"}, "MAX_MESSAGE_LENGTH"),
])
def test_python_m_chat_refuses_bad_settings_in_one_line(env, variable):
    result = subprocess.run([sys.executable, "-m", "chat"], env={**_base_env(), **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(("argv", "env", "line"), [
    (["--port", "99999"], {}, "python -m chat: error: argument --port: expected a port from 1 "
                              "to 65535, not '99999'"),
    (["--host", "999.1.1.1"], {}, "chat: HOST='999.1.1.1' is not valid"),
    (["--host", "10.254.254.1"], {}, "chat: cannot listen on 10.254.254.1:"),
    ([], {"HOST": "127.0.0.1"}, "chat: cannot listen on 127.0.0.1:{busy}: Address already in use"),
])
def test_python_m_chat_refuses_an_address_in_one_line(argv, env, line):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "chat", *argv],
                                env={**_base_env(), "PORT": str(port), **env},
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(line.format(busy=port)), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "serving on" not in result.stdout


def test_python_m_chat_help_works_whatever_the_environment():
    result = subprocess.run([sys.executable, "-m", "chat", "--help"],
                            env={**_base_env(), "REDIS_MODE": "bogus", "PORT": "x"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--port" in result.stdout


def test_gunicorn_refuses_bad_settings_in_one_line(tmp_path):
    from chat.tools.cluster import GUNICORN_CONF, ROOT, free_port

    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind",
         f"127.0.0.1:{free_port()}"],
        env={**_base_env(), "REDIS_MODE": "bogus"}, cwd=ROOT,
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert [line for line in result.stderr.splitlines() if "REDIS_MODE" in line]


def _base_env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PORT"))}


def test_the_history_catch_up_can_be_turned_off():
    assert load_settings({}).catch_up_every == 1.0
    assert load_settings({"CATCH_UP_EVERY": "0"}).catch_up_every == 0.0


@pytest.mark.parametrize(("url", "topology", "nodes", "service", "db"), [
    ("redis+sentinel://127.0.0.1:26379/0/mymaster", "sentinel", [("127.0.0.1", 26379)],
     "mymaster", 0),
    ("redis+sentinel://u:p@s1:26379,s2:26380,s3:26381/2/chat", "sentinel",
     [("s1", 26379), ("s2", 26380), ("s3", 26381)], "chat", 2),
    ("redis+cluster://:pw@n1:7000,n2:7001", "cluster", [("n1", 7000), ("n2", 7001)], None, 0),
    ("rediss+cluster://n1:7000/", "cluster", [("n1", 7000)], None, 0),
    ("redis://127.0.0.1:6390/3", "single", [], None, 3),
])
def test_redis_topologies_are_read_from_the_url(url, topology, nodes, service, db):
    mode = "socketio" if topology != "cluster" else "pubsub"
    settings = Settings(redis_url=url, redis_mode=mode)
    assert load_settings({"REDIS_URL": url, "REDIS_MODE": mode}).redis_url == url
    target = settings.redis_target
    assert (target.topology, list(target.nodes), target.service, target.db) == (
        topology, nodes, service, db)
    # Acks wait for one Redis replica wherever the topology has replicas.
    assert settings.wait_replicas == (0 if topology == "single" else 1)


def test_the_sentinel_url_is_the_one_python_socketio_reads():
    from socketio.redis_manager import parse_redis_sentinel_url

    url = "redis+sentinel://user:pw@s1:26379,s2:26380/1/mymaster"
    target = load_settings({"REDIS_URL": url}).redis_target
    sentinels, service, kwargs = parse_redis_sentinel_url(url)
    assert (list(target.nodes), target.service, target.db) == (sentinels, service, kwargs["db"])
    assert (target.username, target.password) == (kwargs["username"], kwargs["password"])


def test_wait_replicas_can_be_set_or_turned_off():
    sentinel = {"REDIS_URL": "redis+sentinel://s:26379/0/m"}
    assert load_settings({**sentinel, "REDIS_WAIT_REPLICAS": "0"}).wait_replicas == 0
    assert load_settings({"REDIS_URL": "redis://h", "REDIS_WAIT_REPLICAS": "2"}).wait_replicas == 2
    assert load_settings({}).wait_replicas == 0


@pytest.mark.parametrize(("env", "accepts"), [
    ({"REDIS_URL": "redis+sentinel://s1:26379/mymaster"}, "/db/service_name"),
    ({"REDIS_URL": "redis+sentinel://s1:26379/mymaster/0"}, "/db/service_name"),
    ({"REDIS_URL": "redis+sentinel://s1:26379"}, "/db/service_name"),
    ({"REDIS_URL": "redis+sentinel://s1,s2:26379/0/m"}, "'s1' is not host:port"),
    ({"REDIS_URL": "redis+sentinel://s1:99999/0/m"}, "is not host:port"),
    ({"REDIS_URL": "redis+sentinel://s1:1,/0/m"}, "an empty host"),
    ({"REDIS_URL": "redis+cluster://n1:7000/3"}, "database 0 only"),
    ({"REDIS_URL": "redis+cluster://n1:7000?ssl=1", "REDIS_MODE": "pubsub"}, "options"),
    ({"REDIS_URL": "redis+cluster://n1:7000"}, "set REDIS_MODE=pubsub"),
    ({"REDIS_URL": "redis+zookeeper://z:1"}, "redis+sentinel://"),
    ({"REDIS_WAIT_REPLICAS": "-1"}, ">= 0"),
    ({"REDIS_CHANNEL": "chat{x}"}, "hash tags"),
])
def test_bad_redis_topologies_are_refused_in_one_line(env, accepts):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.split("=")[0] in env, message
    assert accepts in message
    assert "\n" not in message


def test_a_refused_url_does_not_show_its_password():
    with pytest.raises(SettingsError) as info:
        load_settings({"REDIS_URL": "redis+sentinel://u:secret@s1:26379/x/m"})
    assert "secret" not in str(info.value) and "u:***@s1" in str(info.value)
