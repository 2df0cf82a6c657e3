"""The callstate's merge rules, over events and shares with chosen times."""

from __future__ import annotations

from services.callstate.model import ANSWERED, ENDED, HELD, CallBook, Event, Outcome, Party, Share

ALICE = Party("100", "Alice", "sales")
CAROL = Party("200", "Carol", "support", "beta", "Beta office")
DAVE = Party("201", "Dave", "support", "beta", "Beta office")


def alpha_call(book: CallBook) -> None:
    """Alice on alpha calls Carol on beta; alpha's gateway sees the answer at t=10.2."""
    book.apply(Event("c1", "created", 10.0, ALICE, Party("200", server_id="beta"), "beta"))
    book.apply(Event("c1", "ringing", 10.1, ALICE, Party("200", server_id="beta"), "beta"))


def test_the_answer_is_shared_and_both_servers_start_segment_one_at_the_earlier_time() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    outcome = book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    share = outcome.share
    assert share is not None and (share.server_id, share.phase, share.segment) == ("alpha", ANSWERED, 1)
    assert share.party == Party("100", "Alice", "sales", "alpha", "Alpha office")
    # beta saw the answer first (its phone answered) and says so: alpha adopts beta's time.
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 10.15, 1))
    call = book.calls["c1"]
    assert call.remote == CAROL and call.segments[0].started_at == 10.15 and call.answered_at == 10.15
    assert call.segments[0].remote == CAROL and call.segments[0].server_ids == ("alpha", "beta")
    # A later, larger time from the other side changes nothing.
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 10.3, 1))
    assert call.segments[0].started_at == 10.15


def test_an_outgoing_trunk_call_keeps_what_its_peer_said_before_the_gateway_named_the_peer() -> None:
    """alpha's gateway learns the called server at the answer; beta's callstate can tell alpha's
    of the answer (and more) before that: its time still sets the segment's start."""
    book = CallBook("alpha", "Alpha office")
    book.apply(Event("c1", "created", 10.0, ALICE, Party("200")))
    book.apply(Event("c1", "ringing", 10.1, ALICE, Party("200")))
    assert book.shared(Share("c1", "beta", CAROL, ANSWERED, 10.15, 1)) == Outcome()
    book.shared(Share("c1", "beta", CAROL, HELD, 10.18, 1, held_by="local"))
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    call = book.calls["c1"]
    assert call.segments[0].started_at == 10.15 and call.remote == CAROL
    assert (call.phase, call.held_by) == (HELD, "remote") and call.strangers == {}


def test_a_transfer_on_the_other_server_cuts_a_segment_and_tells_the_phone() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 10.2, 1))
    outcome = book.shared(Share("c1", "beta", DAVE, ANSWERED, 20.0, 2))
    call = book.calls["c1"]
    assert outcome.new_party == DAVE and call.remote == DAVE
    assert [(s.n, s.started_at, s.ended_at, s.remote.number) for s in call.segments] == [
        (1, 10.2, 20.0, "200"),
        (2, 20.0, None, "201"),
    ]


def test_a_transfer_here_is_shared_with_the_next_segment_number() -> None:
    book = CallBook("beta", "Beta office")
    book.apply(Event("c1", "created", 10.0, CAROL, Party("100", server_id="alpha"), "alpha", outgoing=False))
    book.apply(Event("c1", "answered", 10.1, CAROL, Party("100", server_id="alpha"), "alpha", outgoing=False))
    outcome = book.apply(Event("c1", "transferred", 20.0, DAVE, Party("100", server_id="alpha"), "alpha", False))
    assert outcome.share is not None and (outcome.share.segment, outcome.share.party.number) == (2, "201")
    assert [s.local.number for s in book.calls["c1"].segments] == ["200", "201"]


def test_hold_by_the_other_side_and_stale_news() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.apply(Event("c1", "held", 11.0, ALICE, Party("200", server_id="beta"), "beta", by="remote"))
    call = book.calls["c1"]
    assert (call.phase, call.held_by) == (HELD, "remote")
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 10.2, 1))  # older than the hold: no resume
    assert call.phase == HELD
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 12.0, 1, held_by=""))  # beta resumed
    assert (call.phase, call.held_by) == (ANSWERED, "")
    book.shared(Share("c1", "beta", CAROL, HELD, 13.0, 1, held_by="local"))  # beta's phone holds
    assert (call.phase, call.held_by) == (HELD, "remote")


def test_the_end_is_cut_at_the_earlier_time_on_both_servers() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    outcome = book.apply(Event("c1", "ended", 30.5, ALICE, Party(), "beta", reason="hung up by callee"))
    assert outcome.share is not None and outcome.share.phase == ENDED
    book.shared(Share("c1", "beta", CAROL, ENDED, 30.4, 1, reason="hung up by callee"))
    call = book.calls["c1"]
    assert call.ended_at == 30.4 and call.segments[-1].ended_at == 30.4 and call.end_reason == "hung up by callee"
    assert book.apply(Event("c1", "answered", 31.0)).share is None  # nothing revives an ended call


def test_a_call_between_own_phones_shares_nothing() -> None:
    book = CallBook("alpha", "Alpha office")
    book.apply(Event("c2", "created", 1.0, ALICE, Party("101", server_id="alpha")))
    assert book.apply(Event("c2", "answered", 1.1, ALICE, Party("101", server_id="alpha"))).share is None
    assert book.calls["c2"].segments[0].server_ids == ("alpha",)


def test_a_share_before_the_gateway_spoke_is_kept() -> None:
    book = CallBook("beta", "Beta office")
    book.shared(Share("c3", "alpha", ALICE, ANSWERED, 5.0, 1))
    book.apply(Event("c3", "created", 4.9, CAROL, Party("100", server_id="alpha"), "alpha", outgoing=False))
    book.apply(Event("c3", "answered", 5.1, CAROL, Party("100", server_id="alpha"), "alpha", outgoing=False))
    call = book.calls["c3"]
    assert call.segments[0].started_at == 5.0 and call.answered_at == 5.0  # alpha's earlier time
    assert (
        call.remote.display_name == "Alice"
        and call.remote.department == "sales"
        and call.local == Party("200", "Carol", "support", "beta", "Beta office")
    )


def test_a_call_brought_home_ignores_its_former_peer() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    bob = Party("101", "Bob", "sales", "alpha")
    book.apply(Event("c1", "transferred", 20.0, ALICE, bob, ""))  # the loop collapsed here
    assert book.shared(Share("c1", "beta", CAROL, ENDED, 20.1, 2)) == Outcome()
    assert book.shared(Share("c1", "gamma", DAVE, ANSWERED, 1, 1)) == Outcome()
    call = book.calls["c1"]
    assert (call.phase, call.remote.number, call.cross_server) == (ANSWERED, "101", False)


def test_the_former_peer_ending_before_the_gateway_reports_the_collapse_ends_nothing() -> None:
    """The collapse's BYE reaches the peer, whose end can come back before this server's gateway
    reports the collapse: the call lives on here as a local call."""
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", Party("101", server_id="alpha"), ANSWERED, 20.0, 2))
    book.shared(Share("c1", "beta", Party("101", server_id="alpha"), ENDED, 20.1, 2, reason="hung up by caller"))
    call = book.calls["c1"]
    assert call.phase == ANSWERED
    book.apply(Event("c1", "transferred", 20.05, ALICE, Party("101", "Bob", "sales", "alpha"), ""))
    assert (call.phase, call.remote.number, call.cross_server, call.peer_end) == (ANSWERED, "101", False, None)
    book.apply(Event("c1", "ended", 30.0, ALICE, Party("101"), "", reason="hung up by caller"))
    assert (call.phase, call.ended_at) == (ENDED, 30.0)


def test_the_peer_ending_first_sets_the_end_time_and_the_gateway_ends_the_call() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", CAROL, ENDED, 30.4, 1, reason="hung up by callee"))
    call = book.calls["c1"]
    assert call.phase == ANSWERED  # until this server's gateway says so
    outcome = book.apply(Event("c1", "ended", 30.5, ALICE, Party(), "beta", reason="hung up by callee"))
    assert (call.phase, call.ended_at, call.segments[-1].ended_at) == (ENDED, 30.4, 30.4)
    assert outcome.share is not None and outcome.share.at == 30.4
    # A record only the peer told of (this gateway never had the call) ends on the peer's word.
    book.shared(Share("c9", "beta", CAROL, ANSWERED, 40.0, 1))
    book.shared(Share("c9", "beta", CAROL, ENDED, 41.0, 1, reason="hung up by callee"))
    assert book.calls["c9"].phase == ENDED


def test_a_transfer_there_before_the_answer_here_is_applied_after_it() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 10.1, 1))
    assert book.shared(Share("c1", "beta", DAVE, ANSWERED, 10.3, 2)) == Outcome()  # not answered here yet
    outcome = book.apply(Event("c1", "answered", 10.35, ALICE, Party("200", server_id="beta"), "beta"))
    call = book.calls["c1"]
    assert outcome.new_party == DAVE and call.remote == DAVE
    assert [(s.n, s.started_at, s.ended_at) for s in call.segments] == [(1, 10.1, 10.3), (2, 10.3, None)]


def test_an_answer_to_a_share_never_brings_a_new_party_by_itself() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.learned("c1", Party("201", "Dave", "support", "beta"))  # beta answered after its transfer
    assert book.calls["c1"].remote.number == "200"
    book.learned("c1", CAROL)
    assert book.calls["c1"].remote == CAROL
    outcome = book.shared(Share("c1", "beta", DAVE, ANSWERED, 10.3, 2))  # the transfer's own share
    assert outcome.new_party == DAVE and book.calls["c1"].segment_count == 2


def test_a_call_through_this_server_passes_on_what_the_server_behind_tells() -> None:
    book = CallBook("beta", "Beta office")
    alice = Party("100", "Alice", "sales", "alpha", "Alpha office")
    book.apply(Event("c1", "created", 10.0, CAROL, alice, "alpha", outgoing=False))
    book.apply(Event("c1", "answered", 10.1, CAROL, alice, "alpha", outgoing=False))
    erin = Party("201", server_id="gamma")  # Carol transferred to Erin, a phone of gamma
    outcome = book.apply(Event("c1", "transferred", 20.0, erin, alice, "alpha", outgoing=False))
    assert outcome.share is not None and outcome.share.party == erin
    told = Party("201", "Erin", "service", "gamma", "Gamma office")
    passed = book.shared(Share("c1", "gamma", told, ANSWERED, 20.05, 1))
    assert passed.share is not None and passed.share.party == told and passed.share.segment == 2
    assert book.calls["c1"].local == told and book.answer_for("c1", "gamma") == alice
    assert book.answer_for("c1", "alpha") == told


def test_what_the_server_behind_says_before_the_transfer_is_reported_here_is_kept() -> None:
    book = CallBook("beta", "Beta office")
    alice = Party("100", "Alice", "sales", "alpha", "Alpha office")
    book.apply(Event("c1", "created", 10.0, CAROL, alice, "alpha", outgoing=False))
    book.apply(Event("c1", "answered", 10.1, CAROL, alice, "alpha", outgoing=False))
    told = Party("201", "Erin", "service", "gamma", "Gamma office")
    assert book.shared(Share("c1", "gamma", told, ANSWERED, 19.9, 1)) == Outcome()  # gamma was quicker
    outcome = book.apply(Event("c1", "transferred", 20.0, Party("201", server_id="gamma"), alice, "alpha", False))
    assert outcome.share is not None and outcome.share.party == told


def test_the_gateway_naming_the_first_party_does_not_undo_a_transfer_there() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", DAVE, ANSWERED, 20.0, 2))
    book.apply(Event("c1", "ended", 30.0, ALICE, Party("200", server_id="beta"), "beta", reason="hung up"))
    assert book.calls["c1"].remote == DAVE


ERIN = Party("201", "Erin", "service", "gamma", "Gamma office")


def transferred_to_gamma(book: CallBook) -> None:
    """alpha's Alice talks to Carol on beta; beta's transfer to Erin on gamma is shared at t=20."""
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", ERIN, ANSWERED, 20.0, 2))


def test_a_hand_over_changes_the_peer_without_a_new_segment() -> None:
    book = CallBook("alpha", "Alpha office")
    transferred_to_gamma(book)
    outcome = book.apply(Event("c1", "rerouted", 20.3, ALICE, Party("201", server_id="gamma"), "gamma"))
    call = book.calls["c1"]
    assert call.peer_server_id == "gamma" and call.remote == ERIN and outcome.new_party is None
    assert [(s.n, s.started_at, s.ended_at) for s in call.segments] == [(1, 10.2, 20.0), (2, 20.0, None)]
    # gamma, the new peer, is told of this server's party and the current segment.
    assert outcome.share is not None and (outcome.share.segment, outcome.share.at) == (2, 20.0)
    # beta, out of the call now, ends its part: that is no end of this call.
    assert book.shared(Share("c1", "beta", ERIN, ENDED, 20.4, 2, reason="handed over")) == Outcome()
    book.shared(Share("c1", "gamma", ERIN, ANSWERED, 20.0, 2))
    assert call.phase == ANSWERED and call.segment_count == 2


def test_a_hand_over_that_overtook_the_transfers_news_still_cuts_the_segment() -> None:
    """beta stepped out before its callstate told alpha of the transfer: alpha's gateway names
    Erin first, and alpha cuts the segment and tells Alice itself."""
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    outcome = book.apply(Event("c1", "rerouted", 20.3, ALICE, Party("201", server_id="gamma"), "gamma"))
    call = book.calls["c1"]
    assert outcome.new_party is not None and outcome.new_party.number == "201"
    assert [(s.n, s.remote.number) for s in call.segments] == [(1, "200"), (2, "201")]
    assert call.peer_server_id == "gamma"


def test_a_server_brought_in_by_a_transfer_takes_the_calls_numbering_from_its_new_peer() -> None:
    """gamma's Erin answered beta's transfer: gamma counted that as its segment 1. Once the call is
    handed over to alpha, alpha's word numbers it 2, as everywhere else; nothing is cut."""
    book = CallBook("gamma", "Gamma office")
    alice = Party("100", "Alice", "sales", "alpha", "Alpha office")
    via_beta = Party("100", server_id="beta")
    book.apply(Event("c1", "created", 19.8, ERIN, via_beta, "beta", outgoing=False))
    book.apply(Event("c1", "answered", 19.9, ERIN, via_beta, "beta", outgoing=False))
    book.apply(Event("c1", "rerouted", 20.3, ERIN, Party("100", server_id="alpha"), "alpha", outgoing=False))
    outcome = book.shared(Share("c1", "alpha", alice, ANSWERED, 20.0, 2))
    call = book.calls["c1"]
    assert outcome.new_party is None and call.remote == alice and call.peer_server_id == "alpha"
    assert [(s.n, s.started_at, s.ended_at) for s in call.segments] == [(2, 20.0, None)]
    # A transfer on alpha later is segment 3 here as there.
    dave = Party("101", "Dave", "sales", "alpha", "Alpha office")
    assert book.shared(Share("c1", "alpha", dave, ANSWERED, 30.0, 3)).new_party == dave
    assert [s.n for s in call.segments] == [2, 3]


def test_a_loop_closed_here_after_the_peer_told_of_the_transfer_cuts_no_second_segment() -> None:
    """beta's share of its transfer to alpha's own Dave came first; then alpha's gateway closes the
    loop and reports Dave as the new party, now local: the same pair, no third segment."""
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    dave_here = Party("201", "Dave", "sales", "alpha", "Alpha office")
    assert book.shared(Share("c1", "beta", dave_here, ANSWERED, 20.0, 2)).new_party == dave_here
    outcome = book.apply(Event("c1", "transferred", 20.3, ALICE, Party("201", server_id="alpha"), ""))
    call = book.calls["c1"]
    assert [(s.n, s.remote.number) for s in call.segments] == [(1, "200"), (2, "201")]
    assert call.peer_server_id == "" and not call.cross_server and outcome.new_party is None


def test_hold_and_resume_each_begin_a_segment_and_the_held_one_is_flagged() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    held = book.apply(Event("c1", "held", 11.0, ALICE, Party("200", server_id="beta"), "beta", by="local"))
    resumed = book.apply(Event("c1", "resumed", 15.0, ALICE, Party("200", server_id="beta"), "beta"))
    call = book.calls["c1"]
    assert [(s.n, s.started_at, s.ended_at, s.held) for s in call.segments] == [
        (1, 10.2, 11.0, False),
        (2, 11.0, 15.0, True),
        (3, 15.0, None, False),
    ]
    # The other server is told the segment numbers, so it cuts at the same moments.
    assert held.share is not None and (held.share.segment, held.share.phase) == (2, HELD)
    assert resumed.share is not None and (resumed.share.segment, resumed.share.phase) == (3, ANSWERED)


def test_a_hold_told_by_the_peer_first_is_one_segment_at_the_earlier_time() -> None:
    """beta's phone holds: beta's callstate tells alpha (segment 2 at 11.0) before alpha's gateway
    reports the re-INVITE it passed on (11.02); alpha cuts once, at beta's time, flagged held."""
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", CAROL, HELD, 11.0, 2, held_by="local"))
    book.apply(Event("c1", "held", 11.02, ALICE, Party("200", server_id="beta"), "beta", by="remote"))
    call = book.calls["c1"]
    assert [(s.n, s.started_at, s.held) for s in call.segments] == [(1, 10.2, False), (2, 11.0, True)]
    # And the other order: alpha's gateway first (resume at 20.03), beta's earlier time (20.0) wins.
    book.apply(Event("c1", "resumed", 20.03, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", CAROL, ANSWERED, 20.0, 3))
    assert [(s.n, s.started_at, s.ended_at, s.held) for s in call.segments] == [
        (1, 10.2, 11.0, False),
        (2, 11.0, 20.0, True),
        (3, 20.0, None, False),
    ]
    assert call.phase == ANSWERED


def test_a_peers_later_time_heard_first_gives_way_to_this_servers_earlier_one() -> None:
    """alpha's gateway saw beta's phone hold at 11.0, but its report reached alpha's callstate
    after beta's share (11.02: beta's gateway saw the answer to its re-INVITE later). alpha cut at
    11.02 on the share; its own earlier time then moves the boundary, and is shared, so that beta
    moves it too: both servers end on 11.0."""
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.shared(Share("c1", "beta", CAROL, HELD, 11.02, 2, held_by="local"))
    held = book.apply(Event("c1", "held", 11.0, ALICE, Party("200", server_id="beta"), "beta", by="remote"))
    call = book.calls["c1"]
    assert [(s.n, s.started_at, s.ended_at, s.held) for s in call.segments] == [
        (1, 10.2, 11.0, False),
        (2, 11.0, None, True),
    ]
    assert held.share is not None and (held.share.segment, held.share.at) == (2, 11.0)


def test_a_transfer_during_a_hold_begins_a_segment_that_is_not_held() -> None:
    book = CallBook("alpha", "Alpha office")
    alpha_call(book)
    book.apply(Event("c1", "answered", 10.2, ALICE, Party("200", server_id="beta"), "beta"))
    book.apply(Event("c1", "held", 11.0, ALICE, Party("200", server_id="beta"), "beta", by="local"))
    book.apply(Event("c1", "transferred", 12.0, Party("101"), Party("200", server_id="beta"), "beta"))
    call = book.calls["c1"]
    assert [(s.n, s.held) for s in call.segments] == [(1, False), (2, True), (3, False)]
    assert (call.phase, call.held_by) == (ANSWERED, "")
