"""engine/questions.py: waiting questions served round robin across owners, a full queue never closed to a
light owner."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.questions import FairQueue


@dataclass(eq=False)
class Q:
    owner: str
    n: int
    group: str | None = None

    def __repr__(self) -> str:
        return f"{self.owner}{self.n}"


def drain(queue: FairQueue[Q]) -> list[str]:
    out = []
    while queue:
        out.append(repr(queue.pop()))
    return out


def test_owners_take_turns_whatever_they_queued() -> None:
    queue: FairQueue[Q] = FairQueue(16)
    for i in range(4):
        queue.push(Q("a", i))
    queue.push(Q("b", 0))
    for i in range(2):
        queue.push(Q("c", i))
    assert drain(queue) == ["a0", "b0", "c0", "a1", "c1", "a2", "a3"]


def test_an_owner_that_arrives_late_waits_behind_one_question_of_each_other_owner() -> None:
    queue: FairQueue[Q] = FairQueue(64)
    for owner in "abcd":
        for i in range(4):
            queue.push(Q(owner, i))
    served = [repr(queue.pop())]  # a0 is being answered
    queue.push(Q("polite", 0))
    while (q := repr(queue.pop())) != "polite0":
        served.append(q)
    # Behind the one being answered (a0) and one of each other owner: not behind the 11 others waiting.
    assert served == ["a0", "b0", "c0", "d0", "a1"]


def test_a_full_queue_pushes_out_the_heaviest_owners_newest_question() -> None:
    queue: FairQueue[Q] = FairQueue(4)
    for i in range(3):
        assert queue.push(Q("greedy", i)) is None
    assert queue.push(Q("other", 0)) is None
    out = queue.push(Q("polite", 0))
    assert repr(out) == "greedy2"  # refused as busy by the caller
    assert len(queue) == 4
    refused = Q("other", 1)  # other holds 1, greedy 2: greedy's again
    assert repr(queue.push(refused)) == "greedy1"
    # Now every owner holds one or two; an owner as heavy as the heaviest is refused itself.
    last = Q("other", 2)
    assert queue.push(last) is last
    assert drain(queue) == ["greedy0", "other0", "polite0", "other1"]


def test_remove_and_clear() -> None:
    queue: FairQueue[Q] = FairQueue(8)
    items = [Q("a", 0), Q("a", 1), Q("b", 0)]
    for q in items:
        queue.push(q)
    assert queue.remove(items[1]) and not queue.remove(items[1])
    assert items[0] in queue and items[1] not in queue
    assert queue.waiting("a") == 1 and queue.waiting("b") == 1
    assert [repr(q) for q in queue.clear()] == ["a0", "b0"]
    assert not queue and len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop()


def test_addresses_take_turns_however_many_connections_each_opens() -> None:
    queue: FairQueue[Q] = FairQueue(64)
    for conn in range(8):  # eight connections from one address, each with two questions waiting
        for i in range(2):
            queue.push(Q(f"hog{conn}_", i, group="10.0.0.3"))
    queue.push(Q("polite", 0, group="10.0.0.1"))
    queue.push(Q("polite", 1, group="10.0.0.1"))
    served = drain(queue)
    # The polite address gets every other turn, not one in nine; within the hogs' address, its
    # connections take turns.
    assert served[:4] == ["hog0_0", "polite0", "hog1_0", "polite1"]
    assert served[4:8] == ["hog2_0", "hog3_0", "hog4_0", "hog5_0"]
    assert len(served) == 18


def test_a_full_queue_pushes_out_the_heaviest_addresss_question_first() -> None:
    queue: FairQueue[Q] = FairQueue(4)
    for conn in range(4):
        assert queue.push(Q(f"c{conn}_", 0, group="hogs")) is None
    out = queue.push(Q("polite", 0, group="me"))
    assert out is not None and out.group == "hogs"  # the heavy address loses one, not the polite one
    assert queue.push(Q("polite", 1, group="me")) is not None  # me 1 < hogs 3: hogs lose another
    assert queue.waiting("polite", "me") == 2
    # Now both hold two: within its own address, an owner as heavy as its address's heaviest waits.
    last = Q("polite", 2, group="me")
    assert queue.push(last) is last
    assert sorted(q.group or "" for q in queue) == ["hogs", "hogs", "me", "me"]
