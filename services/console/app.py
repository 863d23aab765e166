"""The console's pages (FastAPI, server-rendered with Jinja2): incidents and their timelines, the RCA report
with its evidence graph, alerts on agent runs with the flagged step and the mitigation plan, the knowledge
graph around a service, and the inference service's live figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from services.common.pb.faultline.v1 import detector_pb2, kg_pb2
from services.console.evidence_svg import evidence_svg
from services.console.inference_figures import InferenceFigures
from services.console.store import ConsoleStore

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _status(incident: detector_pb2.Incident) -> str:
    return detector_pb2.IncidentStatus.Name(incident.status).removeprefix("INCIDENT_STATUS_").lower()


def _action(plan: detector_pb2.MitigationPlan) -> str:
    return detector_pb2.MitigationAction.Name(plan.action).lower().replace("_", " ")


def create_app(
    store: ConsoleStore,
    figures: InferenceFigures,
    neighbours: Callable[[str], kg_pb2.NeighboursResponse] | None = None,
) -> FastAPI:
    app = FastAPI(title="Faultline console")
    TEMPLATES.env.globals.update(status=_status, action=_action)

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, context)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request) -> HTMLResponse:
        return page(
            request,
            "overview.html",
            incidents=store.incident_list(),
            alerts=store.alert_list(),
            states=store.latest_states(),
            figures=figures.read(),
        )

    @app.get("/incidents/{incident_id}", response_class=HTMLResponse)
    async def incident(request: Request, incident_id: str) -> HTMLResponse:
        view = store.incident(incident_id)
        if view is None:
            raise HTTPException(404, f"no incident {incident_id!r} (yet)")
        report = view.reports[-1] if view.reports else None
        graph = evidence_svg(report) if report is not None else ""
        return page(request, "incident.html", view=view, report=report, graph=graph)

    @app.get("/alerts/{alert_id}", response_class=HTMLResponse)
    async def alert(request: Request, alert_id: str) -> HTMLResponse:
        found = next(((a, p) for a, p in store.alert_list() if a.id == alert_id), None)
        if found is None:
            raise HTTPException(404, f"no alert {alert_id!r} (yet)")
        return page(request, "alert.html", alert=found[0], plans=found[1])

    @app.get("/kg/{service}", response_class=HTMLResponse)
    async def knowledge(request: Request, service: str) -> HTMLResponse:
        edges, error = [], None
        if neighbours is None:
            error = "no kg-builder configured (FAULTLINE_KG_ADDRESS)"
        else:
            try:
                edges = list(neighbours(service).edges)
            except grpc.RpcError as exc:
                error = f"kg-builder answered {exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        return page(request, "kg.html", service=service, edges=edges, error=error)

    return app
