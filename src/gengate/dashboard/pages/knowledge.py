"""Knowledge bases: documents, versions, history, who may read what, suspicious documents.

A team member sees the documents the retrieval itself would let them read (their subject, groups or team on the
document's access list) and the history of those documents only; admins see everything.
"""

from __future__ import annotations

import json
from collections import Counter

from starlette.responses import Response

from gengate.dashboard.html import Html, link, meta, page, render, table, ts, url
from gengate.dashboard.web import Ctx, text_param
from gengate.errors import NotFound
from gengate.rag.types import access_tokens
from gengate.store.dashboard import DashboardQueries
from gengate.store.knowledge import DocRecord, KnowledgeStore

MAX_ROWS = 500


def _readable(ctx: Ctx, docs: dict[str, DocRecord]) -> dict[str, DocRecord]:
    if ctx.viewer.admin:
        return docs
    s = ctx.viewer.session
    mine = access_tokens(users=(s.subject,), groups=s.groups, teams=(s.team,))
    return {doc_id: d for doc_id, d in docs.items() if d.access & mine}


def _flag(suspicious: bool) -> Html:
    return render('<span class="warn">{t}</span>', t="suspicious") if suspicious else Html("")


async def knowledge_bases(ctx: Ctx) -> Response:
    """Every knowledge base with its counts."""
    store = KnowledgeStore(ctx.gateway.store.engine)
    rows = []
    for summary in await store.summaries():
        kb = summary.record
        if ctx.viewer.admin:
            docs, suspicious = summary.documents, summary.suspicious
        else:
            readable = _readable(ctx, await store.active_documents(kb.name))
            if not readable:
                continue
            docs, suspicious = len(readable), sum(d.suspicious for d in readable.values())
        rows.append([link(f"{ctx.plane.prefix}/knowledge/{kb.name}", kb.name), kb.description or "—", f"{docs:,}",
                     f"{summary.chunks:,}" if ctx.viewer.admin else "—", f"{suspicious:,}", kb.embeddings,
                     ts(kb.created_at)])  # fmt: skip
    grid = table(["Knowledge base", "Description", "Documents", "Chunks", "Suspicious", "Embeddings", "Created"],
                 rows, numeric=(2, 3, 4), empty="No knowledge base you can read.")  # fmt: skip
    return page("Knowledge bases", grid, ctx.shell, active="/knowledge")


async def knowledge_base(ctx: Ctx) -> Response:
    """One knowledge base: documents, access-list summary, suspicious documents and history."""
    name = ctx.request.path_params["kb"]
    store = KnowledgeStore(ctx.gateway.store.engine)
    record = await store.get(name)
    docs = _readable(ctx, await store.active_documents(name)) if record is not None else {}
    if record is None or (not ctx.viewer.admin and not docs):
        raise NotFound(f"no knowledge base {name!r}")
    prefix = f"{ctx.plane.prefix}/knowledge/{name}"
    ordered = sorted(docs.values(), key=lambda d: d.doc_id)
    doc_rows = [
        [link(url(f"{prefix}/document", id=d.doc_id), d.doc_id), d.version, d.title, ", ".join(sorted(d.access)),
         d.source or "—", _flag(d.suspicious)]
        for d in ordered[:MAX_ROWS]
    ]  # fmt: skip
    access = Counter(token for d in docs.values() for token in d.access)
    access_rows = [[token, f"{n:,}"] for token, n in access.most_common()]
    suspicious = [[link(url(f"{prefix}/document", id=d.doc_id), d.doc_id), d.version, d.title]
                  for d in ordered if d.suspicious]  # fmt: skip
    history = [
        e
        for e in await store.history(name, limit=200)
        if ctx.viewer.admin or e["doc_id"] is None or e["doc_id"] in docs
    ]
    history_rows = [[ts(e["ts"]), e["action"], e["doc_id"] or "—", e["version"] or "—", _detail(e["detail"])]
                    for e in history[:100]]  # fmt: skip
    more = f" (first {MAX_ROWS} of {len(ordered):,})" if len(ordered) > MAX_ROWS else ""
    body = render(
        "{meta}<h2>Documents{more}</h2>{docs}<h2>Access lists</h2>{access}<h2>Suspicious documents</h2>{suspicious}"
        "<h2>History</h2>{history}",
        meta=meta([("Description", record.description or "—"), ("Embeddings", record.embeddings),
                   ("Chunking", json.dumps(record.chunking)), ("Generation", record.generation),
                   ("Created", ts(record.created_at))]),
        more=more,
        docs=table(["Document", "Version", "Title", "Access list", "Source", "Flag"], doc_rows, numeric=(1,)),
        access=table(["Access token", "Documents"], access_rows, numeric=(1,), caption="Who may read how many"),
        suspicious=table(["Document", "Version", "Title"], suspicious, numeric=(1,),
                         empty="No document was flagged at ingestion."),
        history=table(["Time (UTC)", "Action", "Document", "Version", "Detail"], history_rows, empty="No events."),
    )  # fmt: skip
    return page(f"Knowledge base {name}", body, ctx.shell, active="/knowledge")


def _detail(raw: str) -> str:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return raw[:200]
    if isinstance(data, dict):
        return ", ".join(f"{k}={v}" for k, v in data.items())[:200]
    return str(data)[:200]


async def document(ctx: Ctx) -> Response:
    """Every version of one document."""
    name = ctx.request.path_params["kb"]
    doc_id = text_param(ctx.request, "id", max_len=1024)
    store = KnowledgeStore(ctx.gateway.store.engine)
    if doc_id is None or await store.get(name) is None:
        raise NotFound("no such document")
    versions = await DashboardQueries(ctx.gateway.store.engine).document_versions(name, doc_id)
    if not ctx.viewer.admin:
        s = ctx.viewer.session
        mine = access_tokens(users=(s.subject,), groups=s.groups, teams=(s.team,))
        active = [v for v in versions if v["active"]]
        if not active or not set(json.loads(active[0]["access"])) & mine:
            versions = []
    if not versions:
        raise NotFound("no such document")
    rows = [
        [v["version"], v["title"], v["content_hash"][:12], ", ".join(sorted(json.loads(v["access"]))),
         v["source"] or "—",
         _flag(bool(v["suspicious"])), "active" if v["active"] else "retired", ts(v["created_at"]), ts(v["retired_at"])]
        for v in versions
    ]  # fmt: skip
    events = [e for e in await KnowledgeStore(ctx.gateway.store.engine).history(name, doc_id=doc_id, limit=100)]
    body = render(
        '<p><a href="{back}">← {kb}</a></p><h2>Versions</h2>{versions}<h2>History</h2>{history}',
        back=f"{ctx.plane.prefix}/knowledge/{name}", kb=name,
        versions=table(["Version", "Title", "Content hash", "Access list", "Source", "Flag", "State", "Created",
                        "Retired"], rows, numeric=(0,)),
        history=table(["Time (UTC)", "Action", "Version", "Detail"],
                      [[ts(e["ts"]), e["action"], e["version"] or "—", _detail(e["detail"])] for e in events],
                      empty="No events."),
    )  # fmt: skip
    return page(f"Document {doc_id}", body, ctx.shell, active="/knowledge")
