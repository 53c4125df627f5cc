"""Evaluation-dataset storage: named datasets, their numbered versions and the cases of each version.

Versions are immutable and identified by content hash: importing the cases the latest version already holds adds
nothing, anything else becomes version n+1, written with all its cases in one transaction.

Owns: every query on `eval_datasets` and `eval_cases`. Must not: parse or validate case files, hash cases, or run
them (that is `gengate.eval`).
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gengate.errors import Conflict, NotFound
from gengate.eval.datasets import Case
from gengate.store.schema import eval_cases, eval_datasets


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One stored version of a dataset."""

    name: str
    version: int
    content_hash: str
    created_at: float
    case_count: int
    source: str
    pk: int = 0


def _version_from(row: sa.Row[Any]) -> DatasetVersion:
    m = row._mapping
    return DatasetVersion(
        name=m["name"],
        version=int(m["version"]),
        content_hash=m["content_hash"],
        created_at=float(m["created_at"]),
        case_count=int(m["case_count"]),
        source=m["source"],
        pk=int(m["id"]),
    )


class EvalStore:
    """Repository over the evaluation-dataset tables (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def import_dataset(
        self, name: str, cases: Sequence[Case], content_hash: str, source: str
    ) -> tuple[int, bool]:
        """Store the cases as the next version of `name`: (version, True); (latest version, False) if unchanged.

        Only the file name of `source` is kept, never a full path.
        """
        async with self.engine.begin() as conn:
            latest = await _latest(conn, name)
            if latest is not None and latest.content_hash == content_hash:
                return latest.version, False
            version = latest.version + 1 if latest is not None else 1
            try:
                inserted = await conn.execute(
                    eval_datasets.insert().values(
                        name=name, version=version, content_hash=content_hash, created_at=time.time(),
                        case_count=len(cases), source=PurePath(source).name,
                    )
                )  # fmt: skip
            except IntegrityError:
                raise Conflict(f"dataset {name!r} v{version} was imported concurrently; try again") from None
            key = inserted.inserted_primary_key
            assert key is not None
            pk = int(key[0])
            if cases:
                await conn.execute(
                    eval_cases.insert(),
                    [{"dataset_pk": pk, "case_id": c.case_id, "body": json.dumps(c.to_dict())} for c in cases],
                )
        return version, True

    async def versions(self, name: str) -> builtins.list[DatasetVersion]:
        """Every version of a dataset, oldest first; NotFound for an unknown name."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(eval_datasets).where(eval_datasets.c.name == name).order_by(eval_datasets.c.version)
                )
            ).all()
        if not rows:
            raise NotFound(f"dataset {name!r} does not exist")
        return [_version_from(r) for r in rows]

    async def list(self) -> builtins.list[DatasetVersion]:
        """The latest version of every dataset, by name."""
        newest = (
            sa.select(eval_datasets.c.name, sa.func.max(eval_datasets.c.version).label("version"))
            .group_by(eval_datasets.c.name)
            .subquery()
        )
        query = (
            sa.select(eval_datasets)
            .join(newest, (eval_datasets.c.name == newest.c.name) & (eval_datasets.c.version == newest.c.version))
            .order_by(eval_datasets.c.name)
        )
        async with self.engine.connect() as conn:
            return [_version_from(r) for r in (await conn.execute(query)).all()]

    async def get(self, name: str, version: int | None = None) -> DatasetVersion:
        """One version of a dataset (the latest by default); NotFound for an unknown name or version."""
        async with self.engine.connect() as conn:
            return await _require(conn, name, version)

    async def cases(self, name: str, version: int | None = None) -> builtins.list[Case]:
        """The cases of one version (the latest by default), in the order they were imported."""
        async with self.engine.connect() as conn:
            record = await _require(conn, name, version)
            rows = (
                await conn.execute(
                    sa.select(eval_cases.c.body).where(eval_cases.c.dataset_pk == record.pk).order_by(eval_cases.c.id)
                )
            ).all()
        return [Case.from_dict(json.loads(body)) for (body,) in rows]


async def _latest(conn: AsyncConnection, name: str) -> DatasetVersion | None:
    row = (
        await conn.execute(
            sa.select(eval_datasets)
            .where(eval_datasets.c.name == name)
            .order_by(eval_datasets.c.version.desc())
            .limit(1)
        )
    ).first()
    return _version_from(row) if row is not None else None


async def _require(conn: AsyncConnection, name: str, version: int | None) -> DatasetVersion:
    if version is None:
        latest = await _latest(conn, name)
        if latest is None:
            raise NotFound(f"dataset {name!r} does not exist")
        return latest
    row = (
        await conn.execute(
            sa.select(eval_datasets).where((eval_datasets.c.name == name) & (eval_datasets.c.version == version))
        )
    ).first()
    if row is None:
        exists = (await conn.execute(sa.select(eval_datasets.c.id).where(eval_datasets.c.name == name))).first()
        raise NotFound(f"dataset {name!r} has no version {version}" if exists else f"dataset {name!r} does not exist")
    return _version_from(row)
