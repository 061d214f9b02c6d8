"""The pushed relay (`gateway.relay_push`) against the reference loop (`gateway.relay`).

For every recorded stream, chunking, client hang-up and upstream cut hypothesis draws, both
relays give the client the same bytes, in the same writes, meter the same usage, record it
once, and have written the same bytes when they record it; the pushed relay does so also
when its upstream hands over several chunks per socket read and when the client's buffer
fills (back-pressure pauses the upstream). The fast front takes the pushed path.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.relay_harness import Run, cases, cut, offsets, relay, stream_bytes

maybe = st.none() | st.integers(min_value=0, max_value=40)


def same(pushed: Run, reference: Run) -> None:
    assert pushed.received == reference.received
    assert pushed.ended == reference.ended
    assert pushed.outcome.client_gone == reference.outcome.client_gone
    assert pushed.outcome.upstream_broken == reference.outcome.upstream_broken
    assert (pushed.outcome.first_byte_s is None) == (reference.outcome.first_byte_s is None)
    assert pushed.result == reference.result
    assert pushed.finalized == reference.finalized == 1
    assert pushed.received_at_finalize == reference.received_at_finalize


@settings(max_examples=400, deadline=None)
@given(
    case=cases,
    split=offsets,
    hang_up_after=maybe,
    cut_at=maybe,
    burst=st.integers(min_value=1, max_value=4),
    full_every=st.integers(min_value=0, max_value=3),
)
def test_the_pushed_relay_does_what_the_reference_does(
    case: int,
    split: list[int],
    hang_up_after: int | None,
    cut_at: int | None,
    burst: int,
    full_every: int,
) -> None:
    chunks = cut(stream_bytes(case), split)
    reference = relay(case, chunks, hang_up_after=hang_up_after, cut_at=cut_at)
    pushed = relay(
        case,
        chunks,
        hang_up_after=hang_up_after,
        cut_at=cut_at,
        push=True,
        burst=burst,
        full_every=full_every,
    )
    same(pushed, reference)
