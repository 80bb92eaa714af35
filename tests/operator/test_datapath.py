"""Token Secrets and the agents' aggregate Secret (operator/datapath.py).

The API server is played by :class:`FakeSecrets`, which keeps resourceVersions and answers
409 on a stale write and 404 on a missing object or namespace, as the real one does; the
real API server runs the same flows in e2e/tests/test_operator_datapath.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Mapping
from typing import Any

import pytest

from conspirator.operator.datapath import (
    DataPath,
    TokenUnusableError,
    aggregate_key,
    read_token,
    token_secret_name,
)
from conspirator.operator.views import JobView

from .builders import job, job_body
from .fakes import AGG, OP_NS, FakeSecrets

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class FakeJobs:
    """The controller as the data path sees it: the live jobs once listed."""

    def __init__(self, *views: JobView, listed: bool = True) -> None:
        self.jobs = {v.key: v for v in views}
        self.listed = listed
        self.changed: list[tuple[str, str | None]] = []

    def live_jobs(self) -> Mapping[str, JobView] | None:
        return {k: v for k, v in self.jobs.items() if not v.deleting} if self.listed else None

    def token_changed(self, key: str, secret: str | None) -> None:
        self.changed.append((key, secret))

    def add(self, v: JobView) -> JobView:
        self.jobs[v.key] = v
        return v


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def with_status(v: JobView, **status: Any) -> JobView:
    return JobView.from_body(job_body(v.name, namespace=v.namespace, uid=v.uid,
                                      status=status))


# --- names ------------------------------------------------------------------------------

def test_token_secret_names_are_readable_deterministic_and_valid() -> None:
    assert token_secret_name("resnet50") == "resnet50-conspirator-token"
    assert token_secret_name("a.b") == "a.b-conspirator-token"
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    for n in (long_a, long_b, "x." * 120 + "y", "x" * 235 + "." + "y" * 17):
        name = token_secret_name(n)
        assert len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name), name
        assert name.endswith("-conspirator-token") and name == token_secret_name(n)
    assert token_secret_name(long_a) != token_secret_name(long_b)
    assert len("j" * 235 + "-conspirator-token") == 253
    assert token_secret_name("j" * 235) == "j" * 235 + "-conspirator-token"


def test_aggregate_keys_are_the_agents_file_names() -> None:
    assert aggregate_key("team-a", "resnet50") == "team-a.resnet50"
    assert aggregate_key("ns", "a.b") == "ns.a.b"  # a namespace has no dot: unambiguous
    assert aggregate_key("n" * 63, "j" * 189) is not None
    assert aggregate_key("n" * 63, "j" * 190) is None  # over 253: no Secret key


# --- per-job Secrets --------------------------------------------------------------------

def test_a_job_gets_one_token_secret_and_keeps_its_token() -> None:
    kube, v = FakeSecrets(), job("resnet50")
    jobs = FakeJobs(v)
    dp = DataPath(kube, jobs, OP_NS, AGG)

    async def go() -> tuple[str | None, str | None, str | None]:
        first = await dp.ensure(v)
        again = await dp.ensure(v)
        checked = await dp.ensure(v, check=True)
        return first, again, checked

    first, again, checked = run(go())
    body = kube.store[("ns", "resnet50-conspirator-token")]
    assert body["type"] == "Opaque"
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "conspirator",
                                          "conspirator.io/job": "resnet50"}
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "conspirator.io/v1alpha1", "kind": "InferenceJob", "name": "resnet50",
        "uid": "uid-resnet50", "controller": True, "blockOwnerDeletion": True}]
    token = read_token(body)
    assert first == again == checked == token
    assert token is not None and len(base64.urlsafe_b64decode(token + "=")) == 32
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    # Created once; the second call asked nothing; the check only read.
    assert kube.calls == [("create", "resnet50-conspirator-token"),
                          ("get", "resnet50-conspirator-token")]
    assert jobs.changed == [("ns/resnet50", "resnet50-conspirator-token")]
    # Two jobs, two different tokens.
    other = run(DataPath(kube, jobs, OP_NS, AGG).ensure(job("bert")))
    assert other != token


def test_a_restarted_operator_reads_the_token_back_and_writes_nothing() -> None:
    kube = FakeSecrets()
    v = job("j")
    token = run(DataPath(kube, FakeJobs(v), OP_NS, AGG).ensure(v))
    kube.calls.clear()
    recorded = with_status(v, tokenSecret="j-conspirator-token")
    again = run(DataPath(kube, FakeJobs(recorded), OP_NS, AGG).ensure(recorded))
    assert again == token and kube.writes() == 0
    # Even without the status field (the status write was lost): create, 409, read.
    again = run(DataPath(kube, FakeJobs(v), OP_NS, AGG).ensure(v))
    assert again == token and kube.writes() == 1 and kube.calls[-1][0] == "get"


def test_a_deleted_secret_comes_back_with_a_new_token_and_the_agents_get_it() -> None:
    kube, v = FakeSecrets(), job("j")
    dp = DataPath(kube, FakeJobs(v), OP_NS, AGG)

    async def go() -> tuple[str | None, str | None]:
        old = await dp.ensure(v)
        await dp.sync()
        del kube.store[("ns", "j-conspirator-token")]  # the user rotates the token
        await dp.resync()
        return old, read_token(kube.store[("ns", "j-conspirator-token")])

    old, new = run(go())
    assert new is not None and new != old
    assert kube.data(OP_NS, AGG) == {"ns.j": new}


def test_an_earlier_jobs_secret_is_waited_out_and_never_rewritten() -> None:
    kube, v = FakeSecrets(), job("j", uid="uid-new")
    jobs = FakeJobs(v)
    kube.put("ns", "j-conspirator-token", {"token": "old-token"}, ownerReferences=[
        {"apiVersion": "conspirator.io/v1alpha1", "kind": "InferenceJob", "name": "j",
         "uid": "uid-old", "controller": True}])
    dp = DataPath(kube, jobs, OP_NS, AGG)
    with pytest.raises(TokenUnusableError, match="earlier InferenceJob"):
        run(dp.ensure(v))
    assert "update" not in [verb for verb, _ in kube.calls] and "ns/j" not in dp.tokens
    # The garbage collector deletes it: the next try makes this job's own.
    del kube.store[("ns", "j-conspirator-token")]
    token = run(dp.ensure(v, check=True))
    body = kube.store[("ns", "j-conspirator-token")]
    assert token not in (None, "old-token") and read_token(body) == token
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-new"
    assert jobs.changed == [("ns/j", "j-conspirator-token")]


def test_a_secret_without_a_token_is_reported_and_a_users_own_token_is_kept() -> None:
    kube, v, w = FakeSecrets(), job("j"), job("mine")
    jobs = FakeJobs(v, w)
    kube.put("ns", "mine-conspirator-token", {"token": "brought-by-the-user\n"})
    dp = DataPath(kube, jobs, OP_NS, AGG)
    rv = kube.store[("ns", "mine-conspirator-token")]["metadata"]["resourceVersion"]
    assert run(dp.ensure(w)) == "brought-by-the-user"
    assert kube.store[("ns", "mine-conspirator-token")]["metadata"]["resourceVersion"] == rv

    async def go() -> None:
        token = await dp.ensure(v)
        await dp.sync()
        assert kube.data(OP_NS, AGG) == {"ns.j": token, "ns.mine": "brought-by-the-user"}
        # Someone empties the job's Secret: not rewritten; the job loses its key and its
        # status its token Secret.
        kube.put("ns", "j-conspirator-token", {"other": "x"})
        with pytest.raises(TokenUnusableError, match="no 'token' key"):
            await dp.ensure(v, check=True)
        await dp.sync()
        assert kube.data(OP_NS, AGG) == {"ns.mine": "brought-by-the-user"}
        assert kube.data("ns", "j-conspirator-token") == {"other": "x"}
        assert jobs.changed[-1] == ("ns/j", None)
        await dp.idle()

    run(go())


def test_concurrent_calls_for_one_job_make_one_secret() -> None:
    kube, v = FakeSecrets(), job("j")
    dp = DataPath(kube, FakeJobs(v), OP_NS, AGG)

    async def go() -> list[str | None]:
        return list(await asyncio.gather(*(dp.ensure(v) for _ in range(10))))

    tokens = run(go())
    assert len(set(tokens)) == 1 and tokens[0] is not None
    assert sum(1 for verb, _ in kube.calls if verb == "create") == 1


# --- the aggregate ----------------------------------------------------------------------

def test_the_aggregate_holds_exactly_the_live_jobs() -> None:
    kube = FakeSecrets()
    a, b = job("a"), job("b")
    jobs = FakeJobs(a, b)
    kube.put(OP_NS, AGG, {"ns.a": "stale-a", "gone.job": "t", "ns.zz": "t"})
    dp = DataPath(kube, jobs, OP_NS, AGG)

    async def go() -> None:
        ta, tb = await dp.ensure(a), await dp.ensure(b)
        await dp.sync()
        assert kube.data(OP_NS, AGG) == {"ns.a": ta, "ns.b": tb}  # stale keys dropped
        body = kube.store[(OP_NS, AGG)]
        assert body["type"] == "Opaque"
        assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "conspirator"
        # b is deleted: the finalizer path forgets it and writes at once.
        del jobs.jobs[b.key]
        dp.forget(b.key)
        assert await dp.sync()
        assert kube.data(OP_NS, AGG) == {"ns.a": ta}
        # Nothing changed: no write.
        n = kube.writes()
        assert not await dp.sync() and not await dp.sync(force=True)
        assert kube.writes() == n

    run(go())


def test_the_aggregate_is_created_when_missing_and_recreated_when_deleted() -> None:
    kube, a = FakeSecrets(), job("a")
    dp = DataPath(kube, FakeJobs(a), OP_NS, AGG)

    async def go() -> None:
        ta = await dp.ensure(a)
        await dp.sync()
        assert kube.data(OP_NS, AGG) == {"ns.a": ta}
        del kube.store[(OP_NS, AGG)]
        await dp.resync()
        assert kube.data(OP_NS, AGG) == {"ns.a": ta}

    run(go())


def test_nothing_is_written_before_the_jobs_are_listed() -> None:
    kube, a = FakeSecrets(), job("a")
    kube.put(OP_NS, AGG, {"ns.a": "t-a", "ns.b": "t-b"})
    jobs = FakeJobs(a, listed=False)
    dp = DataPath(kube, jobs, OP_NS, AGG)
    assert not run(dp.sync(force=True))
    assert kube.data(OP_NS, AGG) == {"ns.a": "t-a", "ns.b": "t-b"}


def test_restart_rewrites_nothing_and_keeps_keys_of_jobs_not_read_yet() -> None:
    kube = FakeSecrets()
    views = [job(f"j{i}") for i in range(5)]
    dp = DataPath(kube, FakeJobs(*views), OP_NS, AGG)

    async def first() -> dict[str, str]:
        for v in views:
            await dp.ensure(v)
        await dp.sync()
        return kube.data(OP_NS, AGG)

    before = run(first())
    assert len(before) == 5
    rv = kube.store[(OP_NS, AGG)]["metadata"]["resourceVersion"]
    kube.calls.clear()
    # A new operator: empty caches. Its first write (before reading any job's Secret)
    # keeps every live job's key; its resync reads them all and writes nothing.
    restarted = DataPath(kube, FakeJobs(*views), OP_NS, AGG)
    assert not run(restarted.sync(force=True))
    run(restarted.resync())
    assert kube.writes() == 0
    assert kube.store[(OP_NS, AGG)]["metadata"]["resourceVersion"] == rv
    assert kube.data(OP_NS, AGG) == before
    assert {k: t.token for k, t in restarted.tokens.items()} == {
        f"ns/j{i}": before[f"ns.j{i}"] for i in range(5)}


def test_a_conflicting_write_is_retried_on_the_fresh_object() -> None:
    kube = FakeSecrets()
    a, b, c = job("a"), job("b"), job("c")
    jobs = FakeJobs(a)
    dp = DataPath(kube, jobs, OP_NS, AGG)

    async def go() -> None:
        ta = await dp.ensure(a)
        await dp.sync()
        jobs.add(b)
        jobs.add(c)
        tb = await dp.ensure(b)
        # Another writer (a second replica during a hand-over) changes the Secret between
        # our read and our write: it adds c, which it knows and we have not read yet, and
        # a stale key.
        kube.before_replace = lambda body: kube.put(
            OP_NS, AGG, {"ns.a": ta or "", "ns.c": "t-c", "old.x": "t"})
        kube.calls.clear()
        assert await dp.sync()
        # Our b added, c's key kept (live), the stale key dropped.
        assert kube.data(OP_NS, AGG) == {"ns.a": ta, "ns.b": tb, "ns.c": "t-c"}
        assert [v for v, _ in kube.calls] == ["update", "get", "update"]  # 409, read, write
        await dp.idle()

    run(go())


def test_concurrent_arrivals_coalesce_into_few_writes_and_lose_nothing() -> None:
    kube = FakeSecrets()
    views = [job(f"j{i:02d}") for i in range(40)]
    jobs = FakeJobs(*views)
    dp = DataPath(kube, jobs, OP_NS, AGG)

    async def go() -> None:
        async def arrive(v: JobView) -> None:
            await dp.ensure(v)  # asks for a background write
            if int(v.name[1:]) % 10 == 0:
                await dp.sync()  # and some wait for one, as the finalizer does
        await asyncio.gather(*(arrive(v) for v in views))
        await dp.idle()

    run(go())
    data = kube.data(OP_NS, AGG)
    assert data == {f"ns.{v.name}": read_token(kube.store[("ns", f"{v.name}-conspirator-token")])
                    for v in views}
    aggregate_writes = sum(1 for verb, name in kube.calls if name == AGG and verb != "get")
    assert 1 <= aggregate_writes <= 10, aggregate_writes


def test_disabled_aggregate_and_missing_namespace() -> None:
    kube, a = FakeSecrets(), job("a")
    off = DataPath(kube, FakeJobs(a), OP_NS, "")
    run(off.ensure(a))
    assert not run(off.sync(force=True)) and (OP_NS, "") not in kube.store
    assert [verb for verb, _ in kube.calls] == ["create"]  # the job's own Secret only
    nowhere = DataPath(kube, FakeJobs(a), "no-such-namespace", AGG)
    assert not run(nowhere.sync())  # logged, not raised: no agent could read it anyway


@pytest.mark.parametrize("listed", [True, False])
def test_resync_forgets_gone_jobs(listed: bool) -> None:
    kube, a, b = FakeSecrets(), job("a"), job("b")
    jobs = FakeJobs(a, b)
    dp = DataPath(kube, jobs, OP_NS, AGG)

    async def go() -> None:
        await dp.ensure(a)
        await dp.ensure(b)
        del jobs.jobs[b.key]  # deleted while the operator was not watching
        jobs.listed = listed
        await dp.resync()

    run(go())
    assert set(dp.tokens) == ({"ns/a"} if listed else {"ns/a", "ns/b"})
