"""RuntimeSlicer's learning parts: contrastive losses against hand computations, states, heads, checkpoint, gRPC."""

from __future__ import annotations

import math
from concurrent import futures

import grpc
import numpy as np
import pytest
import torch

from services.common.pb.faultline.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from services.embedding.checkpoint import DEFAULT_DIR, Heads, RuntimeSlicerModel
from services.embedding.contrastive import info_nce, modal_loss, overlap_weights, temporal_loss
from services.embedding.heads import TaskHeads
from services.embedding.model import SlicerModel
from services.embedding.service import EmbeddingEngine, EmbeddingServicer
from services.embedding.states import StatePartition
from services.embedding.windows import FEATURES
from tests.unit.test_embedding_slicing import metric, spans


def test_info_nce_matches_the_formula() -> None:
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0]]), dim=-1)
    t = 0.5
    sim = (a @ b.T / t).numpy()
    row = -np.mean([sim[i, i] - math.log(np.exp(sim[i]).sum()) for i in range(2)])
    col = -np.mean([sim[i, i] - math.log(np.exp(sim[:, i]).sum()) for i in range(2)])
    assert float(info_nce(a, b, t)) == pytest.approx((row + col) / 2, rel=1e-5)


def test_modal_loss_is_lower_when_views_of_a_window_agree() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    aligned = modal_loss({"metrics": x, "traces": x, "logs": x})
    shuffled = modal_loss({"metrics": x, "traces": x[torch.randperm(16)], "logs": x[torch.randperm(16)]})
    assert aligned < shuffled


def test_overlap_weights_follow_the_shared_share_of_the_window() -> None:
    w = overlap_weights(torch.tensor([0.0, 15.0, 30.0, 0.0]), torch.tensor([1, 1, 1, 2]), window_s=30.0)
    assert w[0, 1] == pytest.approx(0.5) and w[0, 2] == 0 and w[0, 3] == 0  # other run: never a pair
    assert torch.all(w.diagonal() == 0) and torch.allclose(w, w.T)


def test_temporal_loss_is_the_weighted_cross_entropy() -> None:
    states = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    weights = torch.tensor([[0, 1.0, 0], [1.0, 0, 0.5], [0, 0.5, 0]])
    t = 0.1
    sim = (states @ states.T / t).numpy()
    expected = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        log_z = math.log(sum(math.exp(sim[i, j]) for j in others))
        target = weights[i].numpy() / weights[i].sum().item()
        expected.append(-sum(target[j] * (sim[i, j] - log_z) for j in others if target[j] > 0))
    assert float(temporal_loss(states, weights, t)) == pytest.approx(np.mean(expected), rel=1e-5)


def test_model_heads_and_states_have_the_documented_shapes() -> None:
    model = SlicerModel(backbone_dim=12, dim=8, numeric_dim=4)
    state, modal = model(torch.randn(5, 3, 12), torch.randn(5, 4))
    assert state.shape == (5, 8) and set(modal) == {"metrics", "traces", "logs"}
    assert torch.allclose(state.norm(dim=-1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError, match="numeric"):
        model(torch.randn(5, 3, 12))
    heads = TaskHeads(8, states=3, failure_types=["cpu", "code"], service_features=len(FEATURES))
    chosen = torch.tensor([0, 1, 2, 0, 1])
    profiles = torch.randn(5, len(FEATURES))  # the largest deviations, the blamed service's deviations
    assert heads.anomaly(state.detach(), profiles, chosen).shape == (5,)
    assert heads.failure_type(profiles, chosen).shape == (5, 2)
    assert heads.root_cause(torch.randn(5, 7, len(FEATURES)), state.detach()).shape == (5, 7)


def test_the_failure_type_follows_the_blamed_services_deviations() -> None:
    """The type head reads the profile of the service the root-cause head ranks first, not the loudest one's."""
    heads = TaskHeads(8, states=1, failure_types=["cpu", "memory"], service_features=len(FEATURES))
    cpu, memory, restarts = FEATURES.index("cpu"), FEATURES.index("memory"), FEATURES.index("restarts")
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.zero_()
        heads.failure_type.profile.weight[0, cpu] = heads.failure_type.profile.weight[1, memory] = 5.0
        heads.root_cause.net[0].weight[0, restarts] = 1.0  # blame follows restarts only
        heads.root_cause.net[2].weight[0, 0] = 1.0
    services = torch.zeros(2, len(FEATURES))
    services[0, cpu] = 3.0  # cart: a large CPU deviation
    services[1, memory], services[1, restarts] = 1.0, 2.0  # redis: memory up and restarting
    partition = StatePartition(np.zeros((1, 8)))
    predict = Heads(partition, heads, 0.5).predict
    prediction = predict(torch.zeros(1, 8), [services], [["cart", "redis"]])[0]
    assert prediction.root_causes[0][0] == "redis" and prediction.failure_type == "memory"
    services[0, restarts], services[1, restarts] = 2.0, 0.0  # now cart is the one restarting
    prediction = predict(torch.zeros(1, 8), [services], [["cart", "redis"]])[0]
    assert prediction.root_causes[0][0] == "cart" and prediction.failure_type == "cpu"


def test_state_partition_picks_k_from_the_data() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3] * 5
    points = np.concatenate([c + rng.normal(0, 0.1, (40, 4)) for c in centres])
    partition, scores = StatePartition.fit(points, range(2, 7))
    assert partition.k == 3 and max(scores, key=scores.get) == 3
    assert len(set(partition.assign(points[:40]))) == 1


@pytest.fixture(scope="module")
def stub() -> embedding_pb2_grpc.EmbeddingServiceStub:
    engine = EmbeddingEngine(RuntimeSlicerModel.load(DEFAULT_DIR))
    server = grpc.server(futures.ThreadPoolExecutor(2))
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)
    server.stop(None)


def _window(start_s: int, end_s: int) -> common_pb2.TimeWindow:
    window = common_pb2.TimeWindow()
    window.start.FromSeconds(start_s)
    window.end.FromSeconds(end_s)
    return window


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({}, "window is required"),
        ({"window": _window(200, 100)}, "must be after"),
        ({"window": _window(100, 130), "spans": [b"\xff\xff\xff"]}, "spans[0] is not an OTLP export request"),
        ({"window": _window(100, 130)}, "no telemetry"),
    ],
)
def test_embed_window_rejects_bad_input_with_a_reason(stub, request_fields: dict, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        stub.EmbedWindow(embedding_pb2.EmbedWindowRequest(system="shop", **request_fields))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in raised.value.details()


def test_embed_window_answers_a_state_and_model_info_describes_the_model(stub) -> None:  # type: ignore[no-untyped-def]
    request = embedding_pb2.EmbedWindowRequest(
        system="shop",
        window=_window(100, 130),
        spans=[spans("cart", [101.0, 102.0, 140.0]).SerializeToString()],
        metrics=[metric("cart", "container.cpu.utilization", 105.0, 30.0).SerializeToString()],
    )
    state = stub.EmbedWindow(request)
    info = stub.GetModelInfo(embedding_pb2.GetModelInfoRequest())
    assert state.system == "shop" and state.spans == 2 and state.metric_points == 1  # the span at 140 is outside
    assert len(state.vector) == info.dimension and 0 <= state.anomaly_score <= 1
    assert 0 <= state.state_id < info.states and info.backbone and "cpu" in info.failure_types
