"""Routers in front of the HTTP workers (``hosts.http_worker``): SGLang's model gateway (``smg``)
started by the project, the NetKV router speaking the same P/D protocol, and the OpenAI client
that measures TTFT against either."""
