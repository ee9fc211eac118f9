//! `tally init` for DynamoDB: creating the table (string keys `pk` and `sk`, on-demand
//! billing, TTL on `expires`) and checking that it can be reached.

use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
};

use super::client::{sdk_error, Table};
use crate::store::StoreError;

/// Creates the table if it does not exist, waits until it is active and turns TTL on. Running
/// it again is harmless.
pub(super) fn create_table(table: &Table) -> Result<(), StoreError> {
    let client = &table.client;
    let name = &table.name;
    table.run(async {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete")
        };
        let schema = |name: &str, kind: KeyType| {
            KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("complete")
        };
        let created = client
            .create_table()
            .table_name(name)
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .key_schema(schema("pk", KeyType::Hash))
            .key_schema(schema("sk", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(e) = created {
            if e.as_service_error().map(|s| s.is_resource_in_use_exception()) != Some(true) {
                return Err(sdk_error("create table", e));
            }
        }
        for _ in 0..600 {
            let d =
                client.describe_table().table_name(name).send().await.map_err(|e| sdk_error("describe table", e))?;
            if d.table().and_then(|t| t.table_status()).map(|s| s.as_str() == "ACTIVE") == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ttl = TimeToLiveSpecification::builder().enabled(true).attribute_name("expires").build().expect("complete");
        match client.update_time_to_live().table_name(name).time_to_live_specification(ttl).send().await {
            Ok(_) => Ok(()),
            // Already on.
            Err(e) if e.as_service_error().and_then(|s| s.message()).is_some_and(|m| m.contains("already enabled")) => {
                Ok(())
            }
            Err(e) => Err(sdk_error("enable TTL", e)),
        }
    })
}

/// Checks that the table exists and can be reached (one `DescribeTable`).
pub(super) fn health_check(table: &Table) -> Result<(), StoreError> {
    table.run(async {
        table.client.describe_table().table_name(&table.name).send().await.map(drop).map_err(|e| {
            match e.as_service_error() {
                Some(s) if s.is_resource_not_found_exception() => {
                    StoreError::Unavailable(format!("DynamoDB table {:?} does not exist; run `tally init`", table.name))
                }
                _ => sdk_error("describe table", e),
            }
        })
    })
}
