"""The voting service: counts votes over gRPC (VotingService.Vote and Results).

Votes for :doughnut: fail every time with gRPC status UNKNOWN, as in Buoyant's original, so the
demo always has a failing route. Run as `python3 -m emojivoto.voting`; env GRPC_PORT (8080),
BIND_ADDRESS (0.0.0.0).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from emojivoto import catalog, lifecycle
from emojivoto.gen import voting_pb2, voting_pb2_grpc


class Tally:
    """Votes per shortcode, in memory (a restart forgets them, as the original did)."""

    def __init__(self) -> None:
        self._votes: Counter[str] = Counter()

    def vote(self, shortcode: str) -> None:
        self._votes[shortcode] += 1

    def leaderboard(self) -> list[tuple[str, int]]:
        return sorted(self._votes.items(), key=lambda item: (-item[1], item[0]))


class VotingService(voting_pb2_grpc.VotingServiceServicer):
    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    async def Vote(
        self, request: voting_pb2.VoteRequest, context: grpc.aio.ServicerContext
    ) -> voting_pb2.VoteResponse:
        if not request.shortcode:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "shortcode is empty")
        if request.shortcode == catalog.DOUGHNUT:
            # The deliberate bug the demo is known for; UNKNOWN is what an unhandled error gives.
            await context.abort(grpc.StatusCode.UNKNOWN, "ERROR: cannot vote for :doughnut:")
        self._tally.vote(request.shortcode)
        return voting_pb2.VoteResponse()

    async def Results(
        self, request: voting_pb2.ResultsRequest, context: grpc.aio.ServicerContext
    ) -> voting_pb2.ResultsResponse:
        return voting_pb2.ResultsResponse(
            results=[
                voting_pb2.VotingResult(shortcode=shortcode, votes=votes)
                for shortcode, votes in self._tally.leaderboard()
            ]
        )


async def run() -> None:
    log = lifecycle.configure_logging("voting-svc")
    stop = lifecycle.stop_on_signals()
    host = lifecycle.bind_address()
    server = grpc.aio.server()
    voting_pb2_grpc.add_VotingServiceServicer_to_server(VotingService(Tally()), server)
    port = server.add_insecure_port(f"{host}:{lifecycle.env_int('GRPC_PORT', 8080)}")
    await server.start()
    log.info(lifecycle.listening_line("gRPC VotingService", host, port))
    await stop.wait()
    await server.stop(grace=2)
    log.info("stopped")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
