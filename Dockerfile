# syntax=docker/dockerfile:1
#
# Three stages, one file:
#   bundle  the official socket.io-client browser bundle and the Socket.IO
#           Admin UI, from the npm registry, pinned by package-lock.json;
#   web     NGINX with the page and deploy/nginx.conf (compose's "nginx");
#   server  one chat replica under gunicorn (the default target).

FROM node:20-slim AS bundle
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund \
 && cp -r node_modules/@socket.io/admin-ui/ui/dist admin \
 && sed -i -E 's#<link [^>]*(fonts\.googleapis\.com|cdn\.jsdelivr\.net)[^>]*>##g' admin/index.html


FROM nginx:1.27-alpine AS web
# The image's entrypoint renders templates/*.template with envsubst into
# NGINX_ENVSUBST_OUTPUT_DIR; the filter limits it to our CHAT_ variables, so
# NGINX's own $variables are left alone.  `resolve` (NGINX >= 1.27.3) keeps
# the upstream following Docker's DNS as replicas are scaled or restarted.
ENV NGINX_ENVSUBST_OUTPUT_DIR=/etc/nginx \
    NGINX_ENVSUBST_FILTER=^CHAT_ \
    CHAT_RUN_DIR=/tmp \
    CHAT_MIME_TYPES=/etc/nginx/mime.types \
    CHAT_ACCESS_LOG=/dev/stdout \
    CHAT_WEB_ROOT=/usr/share/nginx/html \
    CHAT_LISTEN=8080 \
    CHAT_RESOLVER="resolver 127.0.0.11 valid=5s ipv6=off;" \
    CHAT_UPSTREAM_SERVERS="server server:8000 resolve max_fails=1 fail_timeout=5s;"
RUN rm -f /etc/nginx/conf.d/default.conf
COPY deploy/nginx.conf /etc/nginx/templates/nginx.conf.template
COPY web/ /usr/share/nginx/html/
COPY --from=bundle /build/node_modules/socket.io-client/dist/socket.io.min.js \
     /usr/share/nginx/html/vendor/socket.io.min.js
# The Socket.IO Admin UI at /admin/ (chat/admin.py).
COPY --from=bundle /build/admin /usr/share/nginx/html/admin
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
    CMD wget -q -O /dev/null http://127.0.0.1:8080/nginx-health || exit 1


FROM python:3.11-slim AS server
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 chat
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY chat/ chat/
RUN pip install .
COPY deploy/gunicorn.conf.py deploy/gunicorn.conf.py
COPY web/ web/
COPY --from=bundle /build/node_modules/socket.io-client/dist/socket.io.min.js web/vendor/
USER chat
# SERVER_ID defaults to the host name: each container of a scaled service
# has its own.  REDIS_URL and REDIS_MODE come from compose.yaml.
ENV WEB_DIR=/app/web
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "--bind", "0.0.0.0:8000"]
