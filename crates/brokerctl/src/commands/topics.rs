//! `brokerctl topics create|list|delete`, through the backend's admin operations.

use broker::{Broker, Error, TopicSpec};

use crate::cli::{CreateTopicArgs, TopicsCommand};
use crate::output::print_line;

/// Runs one topics subcommand. Operations the backend does not have fail with its
/// `unsupported` error, which names the broker.
pub async fn run(broker: &Broker, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Create(args) => create(broker, args).await,
        TopicsCommand::List => {
            let mut topics = broker.backend().list_topics().await?;
            topics.sort();
            for topic in topics {
                print_line(topic)?;
            }
            Ok(())
        }
        TopicsCommand::Delete { name } => {
            broker::naming::validate_name("topic", &name)?;
            broker.backend().delete_topic(&name).await?;
            print_line(format_args!("deleted topic {name}"))?;
            Ok(())
        }
    }
}

async fn create(broker: &Broker, args: CreateTopicArgs) -> anyhow::Result<()> {
    let mut spec = TopicSpec::new(&args.name);
    if let Some(partitions) = args.partitions {
        if !broker.capabilities().partitions {
            return Err(Error::unsupported(format!(
                "--partitions is unsupported on {}: its topics have no partitions",
                broker.kind()
            ))
            .backend(broker.kind())
            .operation("create topic")
            .into());
        }
        spec = spec.partitions(partitions);
    }
    for group in &args.groups {
        spec = spec.group(group);
    }
    broker.ensure_topic(&spec).await?;
    if args.groups.is_empty() {
        print_line(format_args!("topic {} is ready", args.name))
    } else {
        print_line(format_args!(
            "topic {} is ready with groups {}",
            args.name,
            args.groups.join(", ")
        ))
    }
}
