"""The one-writer lease against the real local S3 (SeaweedFS): the conditional puts it relies on
(not always atomic under concurrency, so the lease reads itself back), exactly one of many racing acquires,
a live lease refuses a second writer, a stale or dead one is taken over, and a holder that lost its lease notices and never deletes the new holder's lease."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from radimagenet.io import lease, storage

pytestmark = pytest.mark.integration


def _uri(tag: str) -> storage.S3Uri:
    return storage.parse_uri(f"s3://radimagenet/tests/lease-{tag}-{uuid.uuid4().hex[:8]}/_lease.json")


def _race(n: int, fn) -> list:
    """Run ``fn(i)`` in ``n`` threads released at the same instant; their results (or exceptions)."""
    barrier, out = threading.Barrier(n), [None] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_seaweedfs_conditional_puts_under_concurrency(stack_env):
    """What the lease builds on, as SeaweedFS does it: concurrent ``If-None-Match: *`` creates mostly let one
    writer win, but not always (two may both succeed, the later body staying); losers get 412; the object
    is a winner's body, and a conditional put on a stale etag is refused."""
    uri = _uri("raw")
    clients = [boto3.session.Session().client("s3") for _ in range(16)]

    def put(i: int, **cond) -> str:
        return clients[i].put_object(Bucket=uri.bucket, Key=uri.key, Body=f"writer {i}".encode(), **cond)["ETag"]

    first = _race(16, lambda i: put(i, IfNoneMatch="*"))
    winners = [i for i, r in enumerate(first) if isinstance(r, str)]
    assert winners, first
    losers = [r for r in first if not isinstance(r, str)]
    assert all(isinstance(r, ClientError) and r.response["Error"]["Code"] == "PreconditionFailed" for r in losers)
    final = storage.read_bytes(uri)
    assert final in {f"writer {i}".encode() for i in winners}
    current = storage.client().head_object(Bucket=uri.bucket, Key=uri.key)["ETag"]
    stale = [first[i] for i in winners if first[i] != current]
    for etag in stale:  # a writer that raced and lost: its etag no longer matches
        with pytest.raises(ClientError):
            put(0, IfMatch=etag)
    assert put(0, IfMatch=current)


def test_one_of_many_acquires_wins_and_the_others_name_the_holder(stack_env):
    """Exactly one of 16 racing acquires holds the lease, in every round (the read-back after the
    conditional create settles the races SeaweedFS lets through)."""
    for round_ in range(3):
        uri = _uri(f"acquire{round_}")
        results = _race(16, lambda i, uri=uri: lease.acquire(uri, purpose="ingest"))
        held = [r for r in results if isinstance(r, lease.Lease)]
        refused = [r for r in results if isinstance(r, lease.LeaseHeld)]
        assert len(held) == 1 and len(refused) == 15, results
        assert storage.read_json(uri)["lease_id"] == held[0].body["lease_id"]
        assert held[0].body["holder"] in str(refused[0]) and "--take-over" in str(refused[0])
        held[0].release()
        assert not storage.exists(uri)


def test_a_stale_lease_is_taken_over_and_its_old_holder_stops(stack_env):
    uri = _uri("stale")
    old = lease.acquire(uri, purpose="ingest", ttl_s=1.0)
    with pytest.raises(lease.LeaseHeld):
        lease.acquire(uri, purpose="ingest", ttl_s=1.0)
    time.sleep(2.5)  # S3's Last-Modified has one-second resolution
    new = lease.acquire(uri, purpose="ingest")
    assert new.previous["lease_id"] == old.body["lease_id"] and not new.forced
    old.renew()
    with pytest.raises(lease.LeaseLost, match="taken over"):
        old.check()
    old.release()  # a conditional delete: the new holder's lease stays
    assert storage.read_json(uri)["lease_id"] == new.body["lease_id"]
    new.release()


def test_take_over_flag_takes_a_live_lease(stack_env):
    uri = _uri("force")
    old = lease.acquire(uri, purpose="ingest")
    new = lease.acquire(uri, purpose="ingest", take_over=True)
    assert new.forced and new.previous["lease_id"] == old.body["lease_id"]
    old.renew()
    with pytest.raises(lease.LeaseLost):
        old.check()
    new.release()


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_at_once(stack_env):
    uri = _uri("dead")
    code = ("import json,sys; from radimagenet.io import lease, storage; "
            f"h = lease.acquire(storage.parse_uri({str(uri)!r}), purpose='ingest'); print(h.body['pid'])")
    pid = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert storage.read_json(uri)["pid"] == pid  # the process exited without releasing it
    new = lease.acquire(uri, purpose="ingest")
    assert new.previous["pid"] == pid and not new.forced
    new.release()


def test_hold_renews_and_releases(stack_env):
    uri = _uri("hold")
    with lease.hold(uri, purpose="ingest", ttl_s=4.0) as held:
        first = held.etag
        time.sleep(2.5)  # a heartbeat or two (every ttl/4)
        assert held.etag != first and storage.read_json(uri)["heartbeat"] >= held.body["started"]
        held.check()
        with pytest.raises(lease.LeaseHeld):  # renewed: never stale while held
            lease.acquire(uri, purpose="ingest", ttl_s=4.0)
    assert not storage.exists(uri)


def test_a_holder_taken_over_never_deletes_the_new_lease(stack_env):
    """release() is a conditional delete (If-Match on its own etag): SeaweedFS must refuse it here."""
    uri = _uri("release")
    old = lease.acquire(uri, purpose="ingest")
    new = lease.acquire(uri, purpose="ingest", take_over=True)
    old.release()  # no renew first: the DELETE with the stale etag reaches the server
    assert storage.read_json(uri)["lease_id"] == new.body["lease_id"]
    new.release()
    assert not storage.exists(uri)
