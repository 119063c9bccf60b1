"""gRPC adapter of the coordinator (scalequest.coordinator.v1.CoordinatorService)."""

from __future__ import annotations

import asyncio

from scalequest.coordinator.v1 import coordinator_pb2 as api
from scalequest.coordinator.v1 import coordinator_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from libs.runstate import CLOSED_STATES
from services.coordinator.runs import RunManager, status_to_proto

SERVICE_NAME = api.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


def _run_id(value: str) -> str:
    if not value:
        raise InvalidArgument("run_id is required")
    if len(value) > 64:
        raise InvalidArgument("run_id is too long")
    return value


class CoordinatorServicer(api_grpc.CoordinatorServiceServicer):
    def __init__(self, manager: RunManager) -> None:
        self.manager = manager

    async def StartRun(self, request: api.StartRunRequest, context) -> api.StartRunResponse:
        run_id = await self.manager.start_run(request.config, request.run_id)
        return api.StartRunResponse(run_id=run_id)

    async def GetRun(self, request: api.GetRunRequest, context) -> api.GetRunResponse:
        st = await self.manager.status(_run_id(request.run_id))
        return api.GetRunResponse(status=status_to_proto(st))

    async def ListRuns(self, request: api.ListRunsRequest, context) -> api.ListRunsResponse:
        return api.ListRunsResponse(runs=[status_to_proto(s) for s in await self.manager.list_runs()])

    async def CancelRun(self, request: api.CancelRunRequest, context) -> api.CancelRunResponse:
        run = await self.manager.cancel_run(_run_id(request.run_id))
        return api.CancelRunResponse(status=status_to_proto(await self.manager.status(run.run_id)))

    async def StreamProgress(self, request: api.StreamProgressRequest, context):
        run_id = _run_id(request.run_id)
        interval = request.interval_seconds or 1.0
        if not 0.2 <= interval <= 60:
            raise InvalidArgument("interval_seconds must be in [0.2, 60]")
        while True:
            st = await self.manager.status(run_id)
            yield status_to_proto(st)
            if st["state"] in CLOSED_STATES:
                return
            await asyncio.sleep(interval)
