//! `brokerctl check`: the connection succeeded (connecting is the check); say to what, and
//! what the broker promises.

use broker::{Broker, Capabilities};

use crate::output::print_line;

/// Prints the kind, the endpoint (the backend leaves credentials out) and the capabilities.
pub fn run(broker: &Broker) -> anyhow::Result<()> {
    print_line(format_args!("kind:      {}", broker.kind()))?;
    print_line(format_args!("endpoint:  {}", broker.endpoint()))?;
    print_line("status:    reachable")?;
    print_line("capabilities:")?;
    for (name, value) in capability_rows(&broker.capabilities()) {
        print_line(format_args!("  {name:<56} {value}"))?;
    }
    Ok(())
}

/// The capabilities as (description, value) rows, in the README's order.
pub fn capability_rows(capabilities: &Capabilities) -> Vec<(&'static str, String)> {
    let yes_no = |value: bool| if value { "yes" } else { "no" }.to_owned();
    let Capabilities {
        new_group_reads_history,
        per_key_order,
        members_share_work,
        start_from_latest,
        survives_restart,
        delivery_attempt,
        partitions,
        list_topics,
        delete_topic,
        max_payload_bytes,
    } = *capabilities;
    vec![
        (
            "a new group reads messages published before it existed",
            yes_no(new_group_reads_history),
        ),
        ("per-key order within a group", yes_no(per_key_order)),
        (
            "members of a group work at the same time",
            yes_no(members_share_work),
        ),
        (
            "start a new group at the latest message",
            yes_no(start_from_latest),
        ),
        (
            "confirmed messages survive a broker restart",
            yes_no(survives_restart),
        ),
        ("delivery attempt in metadata", yes_no(delivery_attempt)),
        ("topics have partitions", yes_no(partitions)),
        ("list topics", yes_no(list_topics)),
        ("delete topics", yes_no(delete_topic)),
        (
            "payload limit",
            max_payload_bytes.map_or_else(|| "unknown".to_owned(), size_text),
        ),
    ]
}

/// A byte count for people: `16 MiB (16777216 bytes)`.
fn size_text(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    const KIB: usize = 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB ({bytes} bytes)", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB ({bytes} bytes)", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size_text(16 * 1024 * 1024), "16 MiB (16777216 bytes)");
        assert_eq!(size_text(10 * 1024), "10 KiB (10240 bytes)");
        assert_eq!(size_text(1000), "1000 bytes");
    }

    #[test]
    fn every_capability_has_a_row() {
        assert_eq!(capability_rows(&Capabilities::NONE).len(), 10);
    }
}
