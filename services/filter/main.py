"""filter entrypoint: gRPC FilterService + worker on scalequest.work.filter."""

from __future__ import annotations

import asyncio

from scalequest.common.v1 import items_pb2 as pb
from scalequest.filter.v1 import filter_pb2_grpc as api_grpc

from libs.difficulty import build_difficulty_scorer
from libs.engines.factory import engine_from_settings
from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.queue.topology import DEDUP_BUCKET, dedup_kv
from libs.service import Infra, StageService, WorkerSpec
from libs.storage.objectstore import open_store
from services.filter.claimlog import ClaimLog
from services.filter.decontam import load_or_build
from services.filter.dedup import KVDedupIndex
from services.filter.neardup import KVNearDupIndex, MinHashConfig
from services.filter.servicer import SERVICE_NAME, FilterServicer
from services.filter.settings import FilterSettings
from services.filter.stage import STAGE, FilterStage

Settings = FilterSettings


async def build(settings: FilterSettings, infra: Infra, engine=None) -> StageService:
    engine = engine or await engine_from_settings(settings)
    counters = infra.counters(STAGE)
    kv = await dedup_kv(infra.js)
    flushers = []
    if settings.dedup_protocol == "log":
        claims = ClaimLog(infra.js, kv, DEDUP_BUCKET, neardup_config(settings))
        dedup, neardup = claims.exact, (claims.near if settings.neardup_enabled else None)
        flushers.append(claims.close)  # its log watchers go before the connection drains
    else:
        dedup = KVDedupIndex(kv)
        neardup = KVNearDupIndex(kv, neardup_config(settings)) if settings.neardup_enabled else None
    decontam = None
    if settings.decontam_source_list:
        # Built once per source list and n, shared through the object store (services/filter/decontam.py).
        store = infra.store or await asyncio.to_thread(open_store, settings.store_url)
        decontam = await asyncio.to_thread(
            load_or_build, store, settings.decontam_source_list, settings.decontam_ngram, settings.decontam_field
        )
    difficulty = await build_difficulty_scorer(settings)
    stage = FilterStage(
        engine,
        settings,
        dedup,
        difficulty=difficulty,
        neardup=neardup,
        decontam=decontam,
        counters=counters,
        runs=infra.run_states(),
    )
    server = GrpcServer(
        STAGE, settings, servicers=[(api_grpc.add_FilterServiceServicer_to_server, FilterServicer(stage), SERVICE_NAME)]
    )
    spec = WorkerSpec(subjects.FILTER, decoder(pb.Question), stage.handle)
    return StageService(STAGE, settings, server, infra, spec, counters, flushers=flushers)


def neardup_config(settings: FilterSettings) -> MinHashConfig:
    return MinHashConfig(
        threshold=settings.neardup_threshold,
        num_perm=settings.neardup_num_perm,
        bands=settings.neardup_bands,
        shingle=settings.neardup_shingle,
        number_weight=settings.neardup_number_weight,
    )
