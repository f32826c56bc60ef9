//! Row <-> domain conversions shared by both backends.
//!
//! Documents are stored as the JSON of their domain type. Cohort members are the exception:
//! there can be millions, so their scalar fields are columns and only the two small maps are
//! JSON text, with a fast path for the common empty map.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use switchboard_routing::model::{AppOverrides, CohortMember, Deployment};

use crate::{RecordKind, StoreError};

/// The JSON text of an empty map or of `AppOverrides::default()`.
const EMPTY_OBJECT: &str = "{}";

pub(crate) fn encode<T: Serialize>(
    kind: RecordKind,
    id: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode {
        kind,
        id: id.to_owned(),
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    kind: RecordKind,
    id: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        kind,
        id: id.to_owned(),
        source,
    })
}

/// The distinct phone numbers of a deployment, in a stable order. A number listed twice (in
/// one or two connection configs) is one claim, not a conflict with itself.
pub(crate) fn distinct_numbers(deployment: &Deployment) -> Vec<String> {
    let numbers: BTreeSet<&str> = deployment
        .connection_configs
        .iter()
        .flat_map(|config| config.phone_numbers.iter().map(String::as_str))
        .collect();
    numbers.into_iter().map(str::to_owned).collect()
}

/// A cohort member flattened into the columns it is stored as.
#[derive(Debug)]
pub(crate) struct MemberRow {
    pub phone_key: i64,
    pub phone_number: String,
    pub user_identifier: String,
    pub app_variables: String,
    pub app_overrides: String,
}

impl MemberRow {
    pub(crate) fn encode(
        deployment_id: &str,
        member: &CohortMember,
    ) -> Result<MemberRow, StoreError> {
        let app_variables = if member.app_variables.is_empty() {
            EMPTY_OBJECT.to_owned()
        } else {
            encode(
                RecordKind::CohortMembers,
                deployment_id,
                &member.app_variables,
            )?
        };
        let app_overrides = if member.app_overrides == AppOverrides::default() {
            EMPTY_OBJECT.to_owned()
        } else {
            encode(
                RecordKind::CohortMembers,
                deployment_id,
                &member.app_overrides,
            )?
        };
        let phone_key =
            phone_key(&member.phone_number).ok_or_else(|| StoreError::InvalidPhoneNumber {
                phone_number: member.phone_number.clone(),
            })?;
        Ok(MemberRow {
            phone_key,
            phone_number: member.phone_number.clone(),
            user_identifier: member.user_identifier.clone(),
            app_variables,
            app_overrides,
        })
    }
}

/// Most digits an E.164 number may have is 15; 18 still fits an `i64`, leaving room for
/// the longer national forms some carriers send.
const MAX_PHONE_DIGITS: usize = 18;

/// The digits of a normalised number (`+` and 1–18 digits, no leading zero) as an integer: a
/// compact index key. `None` for anything else (a leading zero would make `+012` and `+12`
/// collide).
pub(crate) fn phone_key(phone_number: &str) -> Option<i64> {
    let digits = phone_number.strip_prefix('+')?;
    let well_formed = (1..=MAX_PHONE_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if well_formed {
        digits.parse().ok()
    } else {
        None
    }
}

/// Rebuilds a member from its columns.
pub(crate) fn decode_member(
    phone_number: &str,
    user_identifier: &str,
    app_variables: &str,
    app_overrides: &str,
) -> Result<CohortMember, StoreError> {
    let app_variables = if app_variables == EMPTY_OBJECT {
        Default::default()
    } else {
        decode(RecordKind::CohortMembers, phone_number, app_variables)?
    };
    let app_overrides = if app_overrides == EMPTY_OBJECT {
        AppOverrides::default()
    } else {
        decode(RecordKind::CohortMembers, phone_number, app_overrides)?
    };
    Ok(CohortMember {
        phone_number: phone_number.to_owned(),
        user_identifier: user_identifier.to_owned(),
        app_variables,
        app_overrides,
    })
}

/// `app_id/version`: the key of an app version in change notices.
pub(crate) fn app_version_key(app_id: &str, version: u32) -> String {
    format!("{app_id}/{version}")
}

/// `deployment_id/cohort_id`: the key of a cohort in change notices.
pub(crate) fn cohort_key(deployment_id: &str, cohort_id: &str) -> String {
    format!("{deployment_id}/{cohort_id}")
}

pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange {
        field,
        value: value.to_string(),
    })
}

pub(crate) fn to_u64(field: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::OutOfRange {
        field,
        value: value.to_string(),
    })
}

pub(crate) fn to_u32(field: &'static str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::OutOfRange {
        field,
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use switchboard_routing::model::{
        ChannelDirection, Connection, ConnectionConfig, DeploymentStatus,
    };

    use super::*;

    #[test]
    fn member_round_trips_with_and_without_maps() {
        let plain = CohortMember {
            phone_number: "+15550001".into(),
            user_identifier: "u1".into(),
            app_variables: BTreeMap::new(),
            app_overrides: AppOverrides::default(),
        };
        let rich = CohortMember {
            app_variables: BTreeMap::from([("name".to_owned(), "Asha \"A\" {x}".to_owned())]),
            app_overrides: AppOverrides {
                initial_language_name: Some("hi".into()),
                ..AppOverrides::default()
            },
            ..plain.clone()
        };
        for member in [plain, rich] {
            let row = MemberRow::encode("dep-1", &member).unwrap();
            let back = decode_member(
                &row.phone_number,
                &row.user_identifier,
                &row.app_variables,
                &row.app_overrides,
            )
            .unwrap();
            assert_eq!(back, member);
        }
    }

    #[test]
    fn phone_keys_accept_only_normalised_numbers() {
        assert_eq!(phone_key("+919876543210"), Some(919_876_543_210));
        assert_eq!(phone_key("+1"), Some(1));
        assert_eq!(
            phone_key("+999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        for bad in [
            "",
            "+",
            "919876543210",
            "+0912",
            "+91 98",
            "+91-98",
            "+1234567890123456789",
            "+١٢",
        ] {
            assert_eq!(phone_key(bad), None, "{bad:?}");
        }
        let member = CohortMember {
            phone_number: "0091".into(),
            user_identifier: "u".into(),
            app_variables: BTreeMap::new(),
            app_overrides: AppOverrides::default(),
        };
        let err = MemberRow::encode("dep", &member).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidPhoneNumber { .. }),
            "{err}"
        );
    }

    #[test]
    fn corrupt_member_json_is_an_error_not_a_panic() {
        let err = decode_member("+1", "u", "{not json", "{}").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    kind: RecordKind::CohortMembers,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn numbers_listed_twice_are_claimed_once() {
        let deployment = Deployment {
            deployment_id: "dep-1".into(),
            name: "n".into(),
            description: None,
            app_id: "app".into(),
            app_version: 1,
            connection_configs: vec![
                ConnectionConfig {
                    connection_id: "a".into(),
                    phone_numbers: vec!["+2".into(), "+1".into()],
                },
                ConnectionConfig {
                    connection_id: "b".into(),
                    phone_numbers: vec!["+1".into()],
                },
            ],
            channel_direction: ChannelDirection::Inbound,
            status: DeploymentStatus::Active,
            inbound_config: None,
            webhook_config: None,
            created_by: String::new(),
            created_at: String::new(),
            updated_by: String::new(),
            updated_at: String::new(),
        };
        assert_eq!(
            distinct_numbers(&deployment),
            vec!["+1".to_owned(), "+2".to_owned()]
        );
    }

    #[test]
    fn connections_stored_before_media_addresses_still_load() {
        let stored = r#"{"connection_id":"trunk","allowed_addresses":["203.0.113.0/24"],"digest":null,"provider":"exotel"}"#;
        let old: Connection = decode(RecordKind::Connection, "trunk", stored).unwrap();
        assert!(old.media_addresses.is_empty());
        assert_eq!(old.max_calls_per_second, None);
        assert_eq!(
            old.media_encryption,
            switchboard_routing::model::MediaEncryption::Allow
        );
        assert!(old.headers_to_parameters.is_empty());
        assert_eq!(old.include_headers, Default::default());
        assert_eq!(
            old.transfer,
            switchboard_routing::model::TransferMode::Refer
        );
        assert_eq!(
            old.allowed_addresses,
            vec!["203.0.113.0/24".parse().unwrap()]
        );

        let new = Connection {
            media_addresses: vec!["198.51.100.0/25".parse().unwrap()],
            max_calls_per_second: Some(20),
            media_encryption: switchboard_routing::model::MediaEncryption::Require,
            headers_to_parameters: [("X-Customer-Id".to_owned(), "customer_id".to_owned())].into(),
            include_headers: switchboard_routing::model::IncludeHeaders::XHeaders,
            transfer: switchboard_routing::model::TransferMode::Disabled,
            ..old
        };
        let text = encode(RecordKind::Connection, "trunk", &new).unwrap();
        assert_eq!(
            decode::<Connection>(RecordKind::Connection, "trunk", &text).unwrap(),
            new
        );
    }
}
