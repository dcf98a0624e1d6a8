//! The ways of consuming a subscription, written once for every backend.

mod at_least_once;
mod at_most_once;
mod dead_letter;
mod fair_share;
mod key_lanes;
mod manual;
mod registry;
mod stop;

pub use at_least_once::Running;
pub use at_most_once::AtMostOnce;
pub use dead_letter::{dead_letter_headers, DeadLetters};
pub use manual::{Incoming, Manual};

pub(crate) use at_least_once::AtLeastOnce;
pub(crate) use registry::Registry;
