//! What a backend can promise, so callers and the conformance suite know what to expect.

/// The guarantees of one backend. The conformance suite gates its cases on these.
///
/// Adapters build it with a struct expression, starting from [`Capabilities::NONE`]:
/// `Capabilities { per_key_order: true, ..Capabilities::NONE }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A group created after a message was published still receives it (Kafka, memory). When
    /// false, declare groups with the topic (`[topics.<name>] groups = [...]`).
    pub new_group_reads_history: bool,
    /// Messages with the same key are handled in publish order within a group.
    pub per_key_order: bool,
    /// Members of one group handle messages at the same time (false when the broker lets one
    /// member work while the others stand by, e.g. RabbitMQ's single active consumer).
    pub members_share_work: bool,
    /// A new group can start from the latest message instead of the earliest.
    pub start_from_latest: bool,
    /// Messages confirmed before a broker restart are delivered after it.
    pub survives_restart: bool,
    /// Deliveries carry the broker's delivery attempt count.
    pub delivery_attempt: bool,
    /// Topics have a number of partitions that can be chosen.
    pub partitions: bool,
    /// Topics can be listed.
    pub list_topics: bool,
    /// Topics can be deleted.
    pub delete_topic: bool,
    /// The largest payload the broker accepts, when it is known up front.
    pub max_payload_bytes: Option<usize>,
}

impl Capabilities {
    /// No guarantees at all; adapters start from this and switch on what they support.
    pub const NONE: Capabilities = Capabilities {
        new_group_reads_history: false,
        per_key_order: false,
        members_share_work: false,
        start_from_latest: false,
        survives_restart: false,
        delivery_attempt: false,
        partitions: false,
        list_topics: false,
        delete_topic: false,
        max_payload_bytes: None,
    };
}
