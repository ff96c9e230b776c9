"""Sans-io protocol code of the node agent: detection, HTTP/1 and HTTP/2 observers, tunnel
preamble, DNS messages and response classification.

Nothing in this package performs I/O or imports asyncio, socket or grpc: callers feed bytes
and act on the returned events and decisions.
"""
