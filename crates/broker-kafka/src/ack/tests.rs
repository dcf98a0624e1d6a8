//! The bookkeeping's rules, one per test, on a [`Shared`] without a consumer.

use super::*;

fn ack(acker: Acker) -> Result<()> {
    match acker.ack() {
        futures::future::Either::Left(ready) => ready.into_inner(),
        futures::future::Either::Right(_) => unreachable!(),
    }
}

fn nack(acker: Acker) -> Result<()> {
    match acker.nack() {
        futures::future::Either::Left(ready) => ready.into_inner(),
        futures::future::Either::Right(_) => unreachable!(),
    }
}

#[test]
fn only_the_handled_prefix_moves() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0]);
    let a = shared.admit(0, 5).unwrap();
    let b = shared.admit(0, 6).unwrap();
    let c = shared.admit(0, 7).unwrap();
    ack(b).unwrap();
    assert!(shared.take_moved().is_empty());
    ack(a).unwrap();
    assert_eq!(shared.take_moved(), [(0, 7)]);
    assert_eq!(shared.close(), [(0, 7)]);
    assert!(ack(c).is_err());
}

#[test]
fn reading_stops_far_enough_behind_an_unsettled_delivery() {
    let shared = Arc::new(Shared::new("t", "g", 4));
    shared.assigned(&[0]);
    let held = shared.admit(0, 0).unwrap();
    let mut offset = 1;
    while shared.room() > 0 && offset < 1_000_000 {
        ack(shared.admit(0, offset).unwrap()).unwrap();
        offset += 1;
    }
    assert_eq!(
        offset as usize,
        4 * WINDOW_PER_SLOT,
        "read on behind the held delivery"
    );
    ack(held).unwrap();
    assert_eq!(shared.room(), 4, "the window emptied");
    assert_eq!(shared.take_moved(), [(0, offset)]);
}

#[test]
fn slots_bound_deliveries_and_come_back_on_drop() {
    let shared = Arc::new(Shared::new("t", "g", 2));
    let a = shared.admit(0, 0).unwrap();
    let b = shared.admit(0, 1).unwrap();
    assert_eq!(shared.room(), 0);
    drop(a);
    assert_eq!(shared.room(), 1);
    assert!(ack(b).is_err(), "rewound to the dropped delivery before it");
    assert_eq!(shared.in_flight.load(Ordering::Acquire), 0);
    // 0 was dropped unsettled: nothing may be committed past it, and it comes again.
    assert!(shared.take_moved().is_empty());
    assert_eq!(shared.take_rewinds().seeks, [(0, 0)]);
}

#[test]
fn a_delivery_dropped_while_running_is_delivered_again() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0]);
    let a = shared.admit(0, 5).unwrap();
    let b = shared.admit(0, 6).unwrap();
    let c = shared.admit(0, 7).unwrap();
    ack(a).unwrap();
    drop(b);
    // Rewound to the dropped message: the partition's commits move on after it is
    // handled, instead of waiting behind it until the next rebalance.
    assert_eq!(shared.take_rewinds().seeks, [(0, 6)]);
    assert!(ack(c).is_err(), "read before the rewind: delivered again");
    let again = shared.admit(0, 6).unwrap();
    ack(again).unwrap();
    assert_eq!(shared.take_moved(), [(0, 7)]);
}

#[test]
fn closing_commits_the_oldest_unsettled_offset() {
    // A nack (or drop) just before closing: the rewind point is committed.
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0, 1]);
    let a = shared.admit(0, 3).unwrap();
    let b = shared.admit(0, 4).unwrap();
    let c = shared.admit(1, 8).unwrap();
    ack(a).unwrap();
    nack(b).unwrap();
    // Dropped once closing has begun: no rewind, the position stays at it.
    shared.stop();
    drop(c);
    assert_eq!(shared.close(), [(0, 4), (1, 8)]);
}

#[test]
fn a_handler_finishing_after_intake_stopped_is_committed() {
    // Closing: the runner stops intake, drops a delivery that waited behind its key, then
    // the running handler of an earlier offset acknowledges.
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0]);
    let running = shared.admit(0, 5).unwrap();
    let waiting = shared.admit(0, 6).unwrap();
    shared.stop();
    drop(waiting);
    ack(running).unwrap();
    assert_eq!(shared.close(), [(0, 6)]);
}

#[test]
fn revoked_partitions_refuse_late_acks() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0, 1]);
    let a = shared.admit(0, 0).unwrap();
    let b = shared.admit(1, 0).unwrap();
    ack(b).unwrap();
    assert_eq!(shared.revoked(&[0, 1]), [(0, 0), (1, 1)]);
    let late = ack(a).unwrap_err();
    assert_eq!(late.kind(), ErrorKind::Connection);
    assert!(late.to_string().contains("delivers it again"), "{late}");
    assert!(shared.take_moved().is_empty());
    shared.assigned(&[0]);
    let again = shared.admit(0, 0).unwrap();
    ack(again).unwrap();
    assert_eq!(shared.take_moved(), [(0, 1)]);
}

#[test]
fn nack_rewinds_to_the_oldest_unsettled_offset() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0]);
    let a = shared.admit(0, 3).unwrap();
    let b = shared.admit(0, 4).unwrap();
    let c = shared.admit(0, 5).unwrap();
    ack(a).unwrap();
    nack(c).unwrap();
    assert_eq!(shared.take_rewinds().seeks, [(0, 4)]);
    // b belongs to the old epoch now: its ack fails, it comes again.
    assert!(ack(b).is_err());
    let again = shared.admit(0, 4).unwrap();
    ack(again).unwrap();
    assert_eq!(shared.take_moved(), [(0, 5)]);
}

#[test]
fn a_record_read_while_paused_is_read_again_and_earlier_deliveries_stay_live() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0, 1]);
    let unsettled = shared.admit(0, 3).unwrap();
    ack(shared.admit(0, 4).unwrap()).unwrap();
    // Each partition from the first record read while paused; partition 2 is not this
    // member's.
    shared.read_again(0, 5);
    shared.read_again(1, 7);
    shared.read_again(1, 8);
    shared.read_again(2, 1);
    assert_eq!(
        shared.take_rewinds(),
        Rewinds {
            seeks: vec![(0, 5), (1, 7)],
            // Stored before seeking: nothing past the unsettled delivery.
            positions: vec![(0, 3), (1, 7)],
        }
    );
    let again = shared.admit(0, 5).expect("read again after the seek");
    assert!(unsettled.is_live());
    ack(unsettled).unwrap();
    ack(again).unwrap();
    assert_eq!(shared.take_moved(), [(0, 6)]);
}

#[test]
fn deliveries_are_live_until_revoked_rewound_or_closed() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0, 1, 2]);
    let revoked = shared.admit(0, 1).unwrap();
    let rewound = shared.admit(1, 1).unwrap();
    let nacked = shared.admit(1, 2).unwrap();
    let kept = shared.admit(2, 1).unwrap();
    assert!(revoked.is_live() && rewound.is_live() && kept.is_live());
    shared.revoked(&[0]);
    nack(nacked).unwrap();
    assert!(!revoked.is_live(), "its partition was revoked");
    assert!(!rewound.is_live(), "its partition was rewound");
    assert!(kept.is_live());
    shared.close();
    assert!(!kept.is_live(), "the subscription closed");
}

#[test]
fn a_rewind_pending_is_not_moved_forward_by_a_later_one() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0]);
    let first = shared.admit(0, 3).unwrap();
    nack(first).unwrap();
    shared.read_again(0, 9);
    assert_eq!(shared.take_rewinds().seeks, [(0, 3)]);
}

#[test]
fn a_rewind_whose_seek_failed_is_done_again_unless_revoked() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    shared.assigned(&[0, 1]);
    nack(shared.admit(0, 4).unwrap()).unwrap();
    nack(shared.admit(1, 9).unwrap()).unwrap();
    assert_eq!(shared.take_rewinds().seeks, [(0, 4), (1, 9)]);
    // Both seeks failed; partition 1 was revoked before the next read.
    shared.rewind_again(0, 4);
    shared.revoked(&[1]);
    shared.rewind_again(1, 9);
    assert!(shared.admit(0, 5).is_none(), "read past the rewind point");
    assert_eq!(shared.take_rewinds().seeks, [(0, 4)]);
}

#[test]
fn messages_read_before_a_pending_rewind_are_skipped() {
    let shared = Arc::new(Shared::new("t", "g", 10));
    let a = shared.admit(0, 0).unwrap();
    nack(a).unwrap();
    assert!(shared.admit(0, 1).is_none());
    assert_eq!(shared.take_rewinds().seeks, [(0, 0)]);
    assert!(shared.admit(0, 0).is_some());
}
