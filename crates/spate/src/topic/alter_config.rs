//! `spate topic alter-config`: IncrementalAlterConfigs on the bootstrap broker.

use super::{not_found, RESOURCE_TOPIC};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::IncrementalAlterConfigsRequest;
use kafka_protocol::protocol::StrBytes;
use spate_client::{self as client, Cluster};

pub(super) async fn alter_configs(
    cluster: &mut Cluster,
    name: &str,
    ops: Vec<AlterableConfig>,
) -> anyhow::Result<()> {
    let bootstrap = cluster.bootstrap().await?;
    let (_, response) = cluster
        .send(&bootstrap, |_| {
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_string(name.to_owned()))
                    .with_configs(ops),
            ])
        })
        .await?;
    let result = response
        .responses
        .iter()
        .find(|r| r.resource_type == RESOURCE_TOPIC && r.resource_name.as_str() == name)
        .ok_or_else(|| {
            anyhow::anyhow!("the IncrementalAlterConfigs response does not mention {name}")
        })?;
    if ResponseError::try_from_code(result.error_code)
        == Some(ResponseError::UnknownTopicOrPartition)
    {
        return Err(not_found(&[name]));
    }
    client::check_message(result.error_code, result.error_message.as_deref(), || {
        format!("cannot alter configs of topic {name}")
    })?;
    Ok(())
}
