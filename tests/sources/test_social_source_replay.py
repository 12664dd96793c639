"""JetstreamSource against the Jetstream replay server."""

from __future__ import annotations

import json
import random
from urllib.parse import parse_qs, urlsplit

from source_helpers import Collector, run

from daemon.sources import metrics
from daemon.sources.social import JetstreamSource
from daemon.tools.capture_servers.jetstream_server import JetstreamReplayServer

WANTED = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.feed.repost")


def _expected(data_root):
    """(type, key, time_us) of every post/like/repost create, read straight from the JSONL."""
    posts, engagements = {}, {}
    for line in (data_root / "social_bluesky" / "jetstream_v1_2026-07-04.jsonl").read_text().splitlines():
        e = json.loads(line)
        c = e.get("commit") or {}
        if e["kind"] != "commit" or c.get("operation") != "create" or c.get("collection") not in WANTED:
            continue
        if c["collection"] == WANTED[0]:
            posts[f"at://{e['did']}/{c['collection']}/{c['rkey']}"] = (e, c["record"])
        else:
            engagements[(e["did"], c["rkey"])] = (e, c)
    return posts, engagements


def test_jetstream_posts_and_engagements_match_and_resume_from_cursor_after_a_drop(data_root):
    posts, engagements = _expected(data_root)
    assert len(posts) == 17 and len(engagements) == 120

    async def body():
        sink = Collector()
        # the capture spans 0.32 s; at speed 0.1 it plays over ~3 s, so the drop lands mid-stream
        async with JetstreamReplayServer(data_root, speed=0.1) as srv:
            src = JetstreamSource(srv.url, sink, collections=WANTED, backoff_initial_s=0.05,
                                  backoff_max_s=0.2, rng=random.Random(2))
            async with src:
                assert await srv.wait_connected(1, 10)
                srv.play()
                await sink.wait(lambda c: len(c.events) >= 40, 30, "events before the drop")
                assert await srv.drop_all() == 1
                await sink.wait(lambda c: len(c.events) >= len(posts) + len(engagements), 30, "every event")
                await srv.finished.wait()
                assert src.state.drops == 1 and src.state.up
            first, second = (parse_qs(urlsplit(r).query) for r in srv.requests[:2])
            assert first["wantedCollections"] == list(WANTED) and "cursor" not in first
            assert int(second["cursor"][0]) <= src.state.cursor  # resumed from (a bit before) the cursor
        got_posts = {p.uri: p for p in sink.of("social.post")}
        got_eng = sink.of("social.engagement")
        assert len(sink.events) == len(posts) + len(engagements), "an event was emitted twice or is missing"
        assert set(got_posts) == set(posts)
        for uri, (e, rec) in posts.items():
            p = got_posts[uri]
            assert (p.did, p.text, p.langs, p.time_us, p.key) == (e["did"], rec["text"], rec.get("langs", []),
                                                                e["time_us"], uri)
            assert p.ts_event == e["time_us"] * 1000 and p.source == "bluesky:jetstream"
        assert sorted((g.did, g.subject_uri, g.kind, g.time_us) for g in got_eng) == sorted(
            (e["did"], c["record"]["subject"]["uri"], c["collection"].rsplit(".", 1)[1], e["time_us"])
            for e, c in engagements.values())
        assert all(g.key == g.subject_uri for g in got_eng)

    run(body(), 90)


def test_jetstream_malformed_frames_become_dead_letters_and_the_stream_goes_on(data_root):
    bad = [
        b"{this is not json",
        json.dumps({"did": "did:plc:x", "time_us": 1783175888100000, "kind": "commit",
                    "commit": {"operation": "create", "collection": "app.bsky.feed.like", "rkey": "r1",
                               "record": {"subject": {}}}}).encode(),
        json.dumps({"did": "did:plc:y", "time_us": 1783175888100001, "kind": "commit",
                    "commit": {"operation": "create", "collection": "app.bsky.feed.post", "rkey": "r2",
                               "record": {"langs": ["en"]}}}).encode(),
        b"\xff\xfe binary garbage",
    ]

    async def body():
        sink, dead = Collector(), Collector()
        before = metrics.sample("eigenloop_source_malformed_frames", source="bluesky:jetstream")
        async with JetstreamReplayServer(data_root, speed=0.1) as srv:
            async with JetstreamSource(srv.url, sink, dead_letter=dead, collections=WANTED) as src:
                assert await srv.wait_connected(1, 10)
                for frame in bad:  # the last one as a binary frame: invalid UTF-8 in a text frame
                    await srv.inject(frame, binary=frame is bad[-1])  # is a websocket protocol error
                await dead.wait(lambda c: len(c.events) == len(bad), 10, "a dead letter per bad frame")
                srv.play()
                await sink.wait(lambda c: len(c.events) >= 20, 30, "good events after the bad ones")
                assert src.state.up and src.state.drops == 0
        assert [d.raw_bytes() for d in dead.events] == bad
        assert all(d.source_topic == "social.events" and d.reason for d in dead.events)
        assert dead.events[-1].raw_encoding == "base64"
        assert metrics.sample("eigenloop_source_malformed_frames", source="bluesky:jetstream") == before + len(bad)

    run(body(), 60)
