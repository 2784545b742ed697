"""The programs that drive the chat, apart from the service itself.

``chat-cluster`` (``cluster.py``) runs the topology as local processes;
``chat-client`` (``client.py``) talks to it from a terminal; ``chat-bench``
(``bench.py``) loads it; ``python -m chat.tools.chaos`` breaks it under load
and ``python -m chat.tools.sweep`` measures it.  ``session.py``, ``wire.py``
and ``load.py`` are what they share: one Socket.IO session, raw Engine.IO
frames for lean receivers, and message stamps with the open-loop schedule.
None of this is imported by the service.
"""
