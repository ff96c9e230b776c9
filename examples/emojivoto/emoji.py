"""The emoji service: the catalog over gRPC (EmojiService.ListAll and FindByShortcode).

Run as `python3 -m emojivoto.emoji`; env GRPC_PORT (8080), BIND_ADDRESS (0.0.0.0).
"""

from __future__ import annotations

import asyncio

import grpc

from emojivoto import catalog, lifecycle
from emojivoto.gen import emoji_pb2, emoji_pb2_grpc


def _message(e: catalog.Emoji) -> emoji_pb2.Emoji:
    return emoji_pb2.Emoji(unicode=e.unicode, shortcode=e.shortcode)


class EmojiService(emoji_pb2_grpc.EmojiServiceServicer):
    def __init__(self) -> None:
        # Built once: the catalog is fixed, and ListAll is the web page's most frequent call.
        self._all = emoji_pb2.ListAllEmojiResponse(list=[_message(e) for e in catalog.EMOJI])

    async def ListAll(
        self, request: emoji_pb2.ListAllEmojiRequest, context: grpc.aio.ServicerContext
    ) -> emoji_pb2.ListAllEmojiResponse:
        return self._all

    async def FindByShortcode(
        self, request: emoji_pb2.FindByShortcodeRequest, context: grpc.aio.ServicerContext
    ) -> emoji_pb2.FindByShortcodeResponse:
        found = catalog.find(request.shortcode)
        if found is None:
            return emoji_pb2.FindByShortcodeResponse()
        return emoji_pb2.FindByShortcodeResponse(emoji=_message(found))


async def run() -> None:
    log = lifecycle.configure_logging("emoji-svc")
    stop = lifecycle.stop_on_signals()
    host = lifecycle.bind_address()
    server = grpc.aio.server()
    emoji_pb2_grpc.add_EmojiServiceServicer_to_server(EmojiService(), server)
    port = server.add_insecure_port(f"{host}:{lifecycle.env_int('GRPC_PORT', 8080)}")
    await server.start()
    log.info(lifecycle.listening_line("gRPC EmojiService", host, port))
    await stop.wait()
    await server.stop(grace=2)
    log.info("stopped")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
