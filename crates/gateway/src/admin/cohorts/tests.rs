//! Unit tests of the mapping and row conversion.
use super::mapping::*;
use super::*;

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

const ISSUE_MAPPING: &str = r#"{"phone_number":{"column_name":"mobile"},"user_identifier":{"column_name":"customer_id","required":true},"app_variables":{"customer_name":{"column_name":"name"}},"app_overrides":{"initial_language_name":{"column_name":"language"}}}"#;

#[test]
fn the_issue_mapping_turns_rows_into_members_with_reasons_for_rejects() {
    let mapping = parse_mapping(ISSUE_MAPPING.as_bytes()).unwrap();
    let b = bind(
        &mapping,
        &header(&["customer_id", "mobile", "name", "language"]),
    )
    .unwrap();
    let row = |cols: &[&str]| header(cols);
    let m = member_from_row(
        &b,
        &row(&["c1", "080 4716 8000", "Asha", "Hindi"]),
        Some("91"),
    )
    .unwrap();
    assert_eq!(m.phone_number, "+918047168000");
    assert_eq!(m.user_identifier, "c1");
    assert_eq!(
        m.app_variables.get("customer_name").map(String::as_str),
        Some("Asha")
    );
    assert_eq!(
        m.app_overrides.initial_language_name.as_deref(),
        Some("Hindi")
    );
    let bad_phone =
        member_from_row(&b, &row(&["c2", "not-a-number", "B", ""]), Some("91")).unwrap_err();
    assert!(bad_phone.starts_with("invalid phone number"), "{bad_phone}");
    let no_id = member_from_row(&b, &row(&["", "+918047168001", "C", ""]), None).unwrap_err();
    assert_eq!(no_id, "missing required column \"customer_id\"");
    let short = member_from_row(&b, &row(&["c4"]), None).unwrap_err();
    assert_eq!(short, "missing required column \"mobile\"");
}

#[test]
fn a_mapped_column_missing_from_the_header_is_a_422_naming_it() {
    let mapping = parse_mapping(ISSUE_MAPPING.as_bytes()).unwrap();
    let Err(ApiError::Validation(errs)) = bind(&mapping, &header(&["mobile", "name"])) else {
        panic!()
    };
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].msg.contains("customer_id"));
}

#[test]
fn bad_transformation_files_report_every_problem() {
    let Err(ApiError::Validation(errs)) = parse_mapping(
        br#"{"phone_number":{},"app_overrides":{"voice":{"column_name":"v"}},"x":1}"#,
    ) else {
        panic!()
    };
    let kinds: Vec<&str> = errs.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["extra_forbidden", "missing", "extra_forbidden"]);
}

#[test]
fn without_a_mapping_the_header_names_the_fields() {
    let h = header(&[
        "phone_number",
        "user_identifier",
        "initial_bot_message",
        "tier",
    ]);
    let b = bind(&default_mapping(&h), &h).unwrap();
    let m = member_from_row(&b, &header(&["+12125551234", "u1", "Hi!", "gold"]), None).unwrap();
    assert_eq!(m.user_identifier, "u1");
    assert_eq!(m.app_overrides.initial_bot_message.as_deref(), Some("Hi!"));
    assert_eq!(
        m.app_variables.get("tier").map(String::as_str),
        Some("gold")
    );
}

#[test]
fn routing_applies_grow_with_the_cohort_but_stay_bounded() {
    use super::ingest::routing_step;
    assert_eq!(
        routing_step(0),
        BATCH_ROWS,
        "small uploads go live batch by batch"
    );
    assert_eq!(routing_step(400_000), 100_000);
    assert_eq!(
        routing_step(10_000_000),
        250_000,
        "rows waiting stay bounded"
    );
    // A 10M-row upload: far fewer applies than its thousand batches.
    let (mut applied, mut applies) = (0usize, 0);
    while applied < 10_000_000 {
        applied += routing_step(applied);
        applies += 1;
    }
    assert!(applies < 100, "{applies} applies");
}
