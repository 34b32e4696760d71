"""echo_ledger's attribution: a lost echo is blamed on what counted a drop where it vanished, or on nothing."""

from __future__ import annotations

from echo_ledger import Cause, Drops, Hop, attribute, ping_counted, report

# h1 -> gm1 -> wan -> gm2 -> h2 and back, as the rekey test captures it (times: seconds into the stream).
PATH_NAMES = (("h1 out", "gm1"), ("wan gm1", "wan"), ("wan gm2", "gm2"), ("h2 in", "h2"), ("h1 in", "h1"))
NO_DROPS = Drops({}, {}, 0)


def path(**missing: tuple[int, ...]) -> list[Hop]:
    """Every hop saw echoes 1-4, but those ``missing`` names for it (by hop name, spaces as underscores)."""
    return [
        Hop(name, {seq: seq / 10 for seq in range(1, 5) if seq not in missing.get(name.replace(" ", "_"), ())}, then)
        for name, then in PATH_NAMES
    ]


def test_an_echo_ping_counted_is_not_lost_even_where_a_capture_missed_it():
    assert attribute(4, path(wan_gm2=(2,)), {1: 0, 2: 0, 3: 0, 4: 0}, NO_DROPS, "h1") == []


def test_a_loss_is_placed_after_the_last_hop_that_saw_it_and_blamed_on_that_members_data_plane():
    hops = path(h2_in=(3,), h1_in=(3,))
    drops = Drops({"gm2": {"unknown_spi": 1}}, {"wan": {"gm2 tx_dropped": 1}}, 0)
    (loss,) = attribute(4, hops, {1: 0, 2: 0, 4: 0}, drops, "h1")
    assert (loss.seq, loss.sent, loss.last_seen, loss.namespace) == (3, 0.3, "wan gm2", "gm2")
    assert loss.cause is Cause.DATAPLANE and "unknown_spi" in loss.why  # a data-plane drop is never load
    two = attribute(4, path(h2_in=(3, 4), h1_in=(3, 4)), {1: 0, 2: 0}, drops, "h1")  # one drop for two losses
    assert [loss.cause for loss in two] == [Cause.DATAPLANE, Cause.UNEXPLAINED]


def test_each_queue_drop_where_an_echo_vanished_proves_one_loss_load_and_drops_elsewhere_prove_nothing():
    hops = path(wan_gm1=(1, 2), wan_gm2=(1, 2), h2_in=(1, 2), h1_in=(1, 2))
    drops = Drops({}, {"gm1": {"gvpn0o tx_dropped": 1, "lan rx_dropped": 1}, "h2": {"eth0 rx_dropped": 1}}, 9)
    losses = attribute(4, hops, {3: 0, 4: 0}, drops, "h1")
    assert [(loss.seq, loss.cause) for loss in losses] == [(1, Cause.LOAD), (2, Cause.LOAD)]
    assert "gvpn0o tx_dropped" in losses[0].why
    one = Drops({}, {"gm1": {"gvpn0o tx_dropped": 1}}, 9)  # the machine-wide backlog proves nothing
    assert [loss.cause for loss in attribute(4, hops, {3: 0, 4: 0}, one, "h1")] == [Cause.LOAD, Cause.UNEXPLAINED]
    elsewhere = Drops({}, {"h2": {"eth0 rx_dropped": 1}}, 0)
    assert {loss.cause for loss in attribute(4, hops, {3: 0, 4: 0}, elsewhere, "h1")} == {Cause.UNEXPLAINED}


def test_a_reply_that_reached_the_host_uncounted_came_after_ping_stopped_waiting():
    (loss,) = attribute(4, path(), {1: 0, 2: 0, 3: 0}, NO_DROPS, "h1")
    assert (loss.seq, loss.namespace, loss.cause) == (4, "h1", Cause.LOAD)


def test_an_echo_never_seen_leaving_vanished_at_the_pinging_host():
    hops = path(**{name.replace(" ", "_"): (4,) for name, _ in PATH_NAMES})
    (loss,) = attribute(4, hops, {1: 0, 2: 0, 3: 0}, NO_DROPS, "h1")
    assert (loss.sent, loss.last_seen, loss.namespace, loss.cause) == (None, "nowhere", "h1", Cause.UNEXPLAINED)
    assert "lost echo 4 (never seen leaving), last seen nowhere, vanished in h1: unexplained" in report(
        4, path(), [loss], NO_DROPS, []
    )


def test_ping_output_gives_what_was_sent_and_each_reply_counted():
    output = (
        "PING 198.19.2.2 (198.19.2.2) 56(84) bytes of data.\n"
        "[1795759547.543210] 64 bytes from 198.19.2.2: icmp_seq=1 ttl=62 time=0.512 ms\n"
        "[1795759547.743210] 64 bytes from 198.19.2.2: icmp_seq=3 ttl=62 time=0.498 ms\n"
        "\n--- 198.19.2.2 ping statistics ---\n"
        "3 packets transmitted, 2 received, 33.3333% packet loss, time 201ms\n"
    )
    assert ping_counted(output) == (3, {1: 1795759547.54321, 3: 1795759547.74321})
