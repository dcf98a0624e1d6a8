//! What the service's answers to provisioning requests mean for the backend, under
//! least-privilege credentials too (see the parent module).

use std::time::Duration;

use broker_api::{Error, ErrorKind, Result};

use crate::error::{is_already_exists, is_not_found, is_permission_denied, rpc_error, BACKEND};

/// The outcome of the connection check: any answer from the service but a refusal of the
/// credentials counts (a caller without `pubsub.topics.list` is still connected); `None` when
/// there was none within `timeout`.
pub(super) fn probe_outcome<T>(
    answer: Option<std::result::Result<T, google_cloud_gax::error::Error>>,
    project_path: &str,
    timeout: Duration,
) -> Result<()> {
    match answer {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) if is_permission_denied(&e) => {
            tracing::debug!(error = %e, "not allowed to list topics; the service answered");
            Ok(())
        }
        Some(Err(e)) => Err(rpc_error(
            e,
            "connect",
            format!("the service did not accept a request for {project_path}"),
        )),
        None => Err(Error::new(
            ErrorKind::Connection,
            format!("no answer within {timeout:?}"),
        )
        .backend(BACKEND)
        .operation("connect")),
    }
}

/// The error for a group's subscription that exists bound to another topic: subscriptions are
/// named `<topic>.<group>`, so `orders` with group `a.b` and `orders.a` with group `b` would
/// share one (and so would a topic deleted and created again elsewhere, leaving its
/// subscriptions detached: `_deleted-topic_`). Used, it would hand out the other topic's
/// messages and none of this one's.
pub(super) fn bound_elsewhere(subscription: &str, topic: &str, bound: &str) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "subscription {subscription} for topic {topic} exists bound to topic {bound}: \
             subscriptions are named <topic>.<group>, so this topic and group collide with \
             another pair; choose another group name (or delete the subscription if it is \
             left over)"
        ),
    )
    .backend(BACKEND)
    .operation("subscribe")
}

/// How a request to create a topic or subscription ended, when the backend may go on.
#[derive(Debug)]
pub(super) enum Creation {
    Created,
    Existed,
    /// The credentials may not create it (see the module docs): taken as existing on first
    /// use, an error when the service lost it.
    NotAllowed(google_cloud_gax::error::Error),
}

pub(super) fn creation<T>(
    created: std::result::Result<T, google_cloud_gax::error::Error>,
) -> std::result::Result<Creation, google_cloud_gax::error::Error> {
    match created {
        Ok(_) => Ok(Creation::Created),
        Err(e) if is_already_exists(&e) => Ok(Creation::Existed),
        Err(e) if is_permission_denied(&e) => Ok(Creation::NotAllowed(e)),
        Err(e) => Err(e),
    }
}

/// What a creation the credentials were not allowed means for `what` (`topic orders`): on first
/// use, that it is managed elsewhere (`Existed`, see the module docs); when `repair`ing what
/// the service lost, that it is gone and may not be created again (an error).
pub(super) fn allowed(created: Creation, what: &str, repair: bool) -> Result<Creation> {
    match created {
        Creation::NotAllowed(denied) if repair => Err(rpc_error(
            denied,
            "create",
            format!("{what} does not exist (any more) and these credentials may not create it"),
        )),
        Creation::NotAllowed(_) => {
            tracing::debug!(what, "not allowed to create it; taking it as existing");
            Ok(Creation::Existed)
        }
        other => Ok(other),
    }
}

/// The outcome of looking up `what` (`topic orders`) with auto-provisioning off: `NotFound`
/// when the service does not have it; taken as existing when the credentials may not look it
/// up (see the module docs).
pub(super) fn must_exist<T>(
    looked_up: std::result::Result<T, google_cloud_gax::error::Error>,
    what: &str,
    operation: &'static str,
) -> Result<()> {
    match looked_up {
        Ok(_) => Ok(()),
        Err(e) if is_permission_denied(&e) => {
            tracing::debug!(error = %e, "not allowed to look up {what}; taking it as existing");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(Error::new(
            ErrorKind::NotFound,
            format!("{what} does not exist and auto-provisioning is off"),
        )
        .backend(BACKEND)
        .operation(operation)),
        Err(e) => Err(rpc_error(e, operation, format!("cannot look up {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use google_cloud_gax::error::rpc::{Code, Status};

    use super::*;

    fn refused(code: Code) -> std::result::Result<(), google_cloud_gax::error::Error> {
        Err(google_cloud_gax::error::Error::service(
            Status::default().set_code(code).set_message("refused"),
        ))
    }

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[test]
    fn a_caller_not_allowed_to_list_topics_is_connected() {
        assert!(probe_outcome(Some(Ok(())), "projects/p", TIMEOUT).is_ok());
        assert!(
            probe_outcome(Some(refused(Code::PermissionDenied)), "projects/p", TIMEOUT).is_ok()
        );
        let err = probe_outcome(Some(refused(Code::Unauthenticated)), "projects/p", TIMEOUT)
            .expect_err("credentials the service refuses");
        assert!(err.to_string().contains("projects/p"), "{err}");
        let err = probe_outcome::<()>(None, "projects/p", TIMEOUT).expect_err("no answer");
        assert_eq!(err.kind(), ErrorKind::Connection);
    }

    #[test]
    fn creating_what_the_caller_may_not_create_goes_on() {
        assert!(matches!(creation(Ok(())), Ok(Creation::Created)));
        assert!(matches!(
            creation(refused(Code::AlreadyExists)),
            Ok(Creation::Existed)
        ));
        assert!(matches!(
            creation(refused(Code::PermissionDenied)),
            Ok(Creation::NotAllowed(_))
        ));
        assert!(creation(refused(Code::InvalidArgument)).is_err());
        assert!(creation(refused(Code::Unauthenticated)).is_err());
    }

    #[test]
    fn looking_up_what_the_caller_may_not_see_goes_on() {
        assert!(must_exist(refused(Code::PermissionDenied), "topic t", "check topic").is_ok());
        let err =
            must_exist(refused(Code::NotFound), "topic t", "check topic").expect_err("missing");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("topic t"), "{err}");
        assert!(must_exist(refused(Code::Unauthenticated), "topic t", "check topic").is_err());
    }
}
