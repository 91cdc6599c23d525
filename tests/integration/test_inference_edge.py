"""The worker's InferenceService at its edge (issue 22): callers without a client token refused when
tokens are required, garbage bytes and oversize requests INVALID_ARGUMENT before any model work."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mixprec import transport
from mixprec.cli.main import main
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc
from worker.agent import AgentConfig, WorkerAgent
from worker.client_tokens import token_hash
from worker.serving import InferenceLimits

LISTED = "mxp_" + "a" * 43
BY_HASH = "mxp_" + "b" * 43
STRANGER = "mxp_" + "c" * 43


@pytest.fixture(scope="module")
def runtime():
    from worker.runtime import build_runtime

    return build_runtime("tiny-llama", eval_samples=0)


def serving(runtime, tmp_path, scenario, limits: InferenceLimits | None = None):
    """Runs `scenario(client_for)` against a worker's InferenceService on port 0 that takes two client tokens."""
    client_tokens = tmp_path / "client-tokens"
    client_tokens.write_text(f"# the search frontend\n{LISTED}\n{token_hash(BY_HASH)}  # by its hash\n")
    config = AgentConfig(endpoint="llm", model="tiny-llama", server="127.0.0.1:1", inference_listen="127.0.0.1:0",
                         client_tokens=str(client_tokens), inference_limits=limits or InferenceLimits())

    async def run():
        agent = WorkerAgent(config, runtime)
        port = await agent.start_inference()
        try:
            await scenario(lambda token=None: _Client(f"127.0.0.1:{port}", token))
        finally:
            await agent._server.stop(0)

    asyncio.run(run())


class _Client:
    def __init__(self, address: str, token: str | None):
        self.channel = transport.aio_channel(address)
        self.metadata = transport.token_metadata(token)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    async def code(self, call, request) -> tuple[grpc.StatusCode, str]:
        try:
            answer = call(request, metadata=self.metadata, timeout=30)
            if hasattr(answer, "__aiter__"):
                async for _ in answer:
                    pass
            else:
                await answer
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details()


def test_callers_without_a_listed_client_token_are_refused(runtime, tmp_path):
    async def scenario(client_for):
        for token in (None, STRANGER, "not-a-token"):
            client = client_for(token)
            for call, request in ((client.stub.WorkerInfo, ipb.WorkerInfoRequest()),
                                  (client.stub.Embed, ipb.EmbedRequest(texts=["x"])),
                                  (client.stub.Generate, ipb.GenerateRequest(prompt="hi", max_tokens=2))):
                code, details = await client.code(call, request)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (token, details)
        for token in (LISTED, BY_HASH):
            client = client_for(token)
            info = await client.stub.WorkerInfo(ipb.WorkerInfoRequest(), metadata=client.metadata, timeout=30)
            assert info.endpoint == "llm" and info.layers
            pieces = [r async for r in client.stub.Generate(ipb.GenerateRequest(prompt="hi", max_tokens=2),
                                                            metadata=client.metadata, timeout=60)]
            assert pieces[-1].done and pieces[-1].generated_tokens >= 1

    serving(runtime, tmp_path, scenario)


def test_garbage_bytes_and_oversize_requests_are_invalid_arguments(runtime, tmp_path):
    async def scenario(client_for):
        client = client_for(LISTED)
        for method in ("Embed", "Generate", "WorkerInfo"):
            path = f"/mixprec.v1.InferenceService/{method}"
            raw = (client.channel.unary_stream if method == "Generate" else client.channel.unary_unary)(path)
            code, details = await client.code(raw, b"\xff\xff\xff\xff garbage")
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, details)
            assert details == "request: is not a valid protobuf message of this method's type"
        code, details = await client.code(client.stub.Embed, ipb.EmbedRequest(texts=["x" * 60] * 2))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "texts: 2 texts of 120 characters in all; the limit is 100 (mixprec worker --max-embed-chars)"
        code, details = await client.code(client.stub.Generate, ipb.GenerateRequest(prompt="y" * 40, max_tokens=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("prompt: 40 tokens plus max_tokens 30; the limit is 64")

    serving(runtime, tmp_path, scenario, InferenceLimits(max_embed_chars=100, max_generate_tokens=64))


def test_a_worker_beyond_loopback_needs_client_tokens_or_auth_off(tmp_path, capsys):
    base = ["worker", "--endpoint", "llm", "--model", "tiny-llama", "--inference-listen", "0.0.0.0:0"]
    assert main(base) == 2
    assert "--client-tokens" in capsys.readouterr().err
    bad = tmp_path / "tokens"
    bad.write_text("hunter2\n")
    assert main([*base, "--client-tokens", str(bad)]) == 2
    assert "line 1 is neither a mixprec token" in capsys.readouterr().err
    assert main([*base, "--client-tokens", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err
