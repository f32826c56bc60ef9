//! The transformation file and the CSV header it binds to: which column feeds which field,
//! and one row to a member or the reason it is rejected.

use super::*;

/// One mapped column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ColumnSpec {
    column: String,
    required: bool,
}

/// Which `app_overrides` field a column feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OverrideField {
    BotMessage,
    StateName,
    LanguageName,
}

impl OverrideField {
    pub(super) const ALL: [(&'static str, OverrideField); 3] = [
        ("initial_bot_message", OverrideField::BotMessage),
        ("initial_state_name", OverrideField::StateName),
        ("initial_language_name", OverrideField::LanguageName),
    ];

    pub(super) fn set(self, o: &mut AppOverrides, value: String) {
        match self {
            OverrideField::BotMessage => o.initial_bot_message = Some(value),
            OverrideField::StateName => o.initial_state_name = Some(value),
            OverrideField::LanguageName => o.initial_language_name = Some(value),
        }
    }
}

/// The transformation file: `{"phone_number":{"column_name":…}, "user_identifier":{…},
/// "app_variables":{name:{…}}, "app_overrides":{field:{…}}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mapping {
    phone: ColumnSpec,
    user_identifier: Option<ColumnSpec>,
    variables: Vec<(String, ColumnSpec)>,
    overrides: Vec<(OverrideField, ColumnSpec)>,
}

pub(super) fn transformation_loc() -> Loc {
    at(&body_loc(), "cohort_transformation_file")
}

/// Parses the transformation file, reporting every problem at `["body","cohort_transformation_file",…]`.
pub(super) fn parse_mapping(bytes: &[u8]) -> Result<Mapping, ApiError> {
    let root = transformation_loc();
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            root.clone(),
            "json_invalid",
            format!("JSON decode error: {e}"),
        )
    })?;
    let mut p = Problems::default();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(
        map,
        &[
            "phone_number",
            "user_identifier",
            "app_variables",
            "app_overrides",
        ],
        &root,
        &mut p,
    );
    let phone = required(map, "phone_number", &root, &mut p)
        .and_then(|v| column_spec(v, true, at(&root, "phone_number"), &mut p));
    let user_identifier = optional(map, "user_identifier")
        .and_then(|v| column_spec(v, false, at(&root, "user_identifier"), &mut p));
    let mut variables = Vec::new();
    if let Some(v) = optional(map, "app_variables") {
        let loc = at(&root, "app_variables");
        if let Some(vars) = object(v, &loc, &mut p) {
            for (name, spec) in vars {
                if let Some(spec) = column_spec(spec, false, at(&loc, name.as_str()), &mut p) {
                    variables.push((name.clone(), spec));
                }
            }
        }
    }
    let mut overrides = Vec::new();
    if let Some(v) = optional(map, "app_overrides") {
        let loc = at(&root, "app_overrides");
        if let Some(o) = object(v, &loc, &mut p) {
            let names: Vec<&str> = OverrideField::ALL.iter().map(|(n, _)| *n).collect();
            deny_unknown(o, &names, &loc, &mut p);
            for (name, field) in OverrideField::ALL {
                if let Some(spec) =
                    optional(o, name).and_then(|v| column_spec(v, false, at(&loc, name), &mut p))
                {
                    overrides.push((field, spec));
                }
            }
        }
    }
    p.finish()?;
    let phone = phone.ok_or_else(|| ApiError::invalid(root, "missing", "Field required"))?;
    Ok(Mapping {
        phone,
        user_identifier,
        variables,
        overrides,
    })
}

/// `{"column_name": "...", "required": bool}`; the phone column is always required.
pub(super) fn column_spec(
    v: &Value,
    always_required: bool,
    loc: Loc,
    p: &mut Problems,
) -> Option<ColumnSpec> {
    let m = object(v, &loc, p)?;
    deny_unknown(m, &["column_name", "required"], &loc, p);
    let column =
        required(m, "column_name", &loc, p).and_then(|v| string(v, at(&loc, "column_name"), p))?;
    let required = match optional(m, "required") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.push(
                at(&loc, "required"),
                "bool_type",
                "Input should be a valid boolean",
            );
            false
        }
    };
    Some(ColumnSpec {
        column: column.to_owned(),
        required: required || always_required,
    })
}

/// The identity mapping used without a transformation file.
pub(super) fn default_mapping(header: &[String]) -> Mapping {
    let spec = |c: &str, required| ColumnSpec {
        column: c.to_owned(),
        required,
    };
    let mut variables = Vec::new();
    let mut overrides = Vec::new();
    for col in header {
        match col.as_str() {
            "phone_number" | "user_identifier" => {}
            other => match OverrideField::ALL.iter().find(|(n, _)| *n == other) {
                Some((_, field)) => overrides.push((*field, spec(other, false))),
                None => variables.push((other.to_owned(), spec(other, false))),
            },
        }
    }
    Mapping {
        phone: spec("phone_number", true),
        user_identifier: header
            .iter()
            .any(|c| c == "user_identifier")
            .then(|| spec("user_identifier", false)),
        variables,
        overrides,
    }
}

/// A mapping resolved against the header: column indices.
#[derive(Debug)]
pub(super) struct BoundMapping {
    phone: (usize, String),
    user_identifier: Option<(usize, ColumnSpec)>,
    variables: Vec<(String, usize, ColumnSpec)>,
    overrides: Vec<(OverrideField, usize, ColumnSpec)>,
}

/// Resolves every mapped column in `header`; a mapped column the header lacks is a 422 naming it.
pub(super) fn bind(mapping: &Mapping, header: &[String]) -> Result<BoundMapping, ApiError> {
    let root = transformation_loc();
    let mut p = Problems::default();
    let index = |spec: &ColumnSpec, loc: Loc, p: &mut Problems| {
        let found = header.iter().position(|h| h.trim() == spec.column);
        if found.is_none() {
            p.push(
                at(&loc, "column_name"),
                "value_error",
                format!(
                    "Value error, column {:?} is not in the CSV header ({})",
                    spec.column,
                    header.join(",")
                ),
            );
        }
        found
    };
    let phone = index(&mapping.phone, at(&root, "phone_number"), &mut p);
    let user_identifier = mapping
        .user_identifier
        .as_ref()
        .and_then(|s| index(s, at(&root, "user_identifier"), &mut p).map(|i| (i, s.clone())));
    let variables = mapping
        .variables
        .iter()
        .filter_map(|(name, s)| {
            index(s, at(&at(&root, "app_variables"), name.as_str()), &mut p)
                .map(|i| (name.clone(), i, s.clone()))
        })
        .collect();
    let overrides = mapping
        .overrides
        .iter()
        .filter_map(|(f, s)| {
            index(s, at(&root, "app_overrides"), &mut p).map(|i| (*f, i, s.clone()))
        })
        .collect();
    p.finish()?;
    let phone = phone.ok_or_else(|| ApiError::invalid(root, "missing", "Field required"))?;
    Ok(BoundMapping {
        phone: (phone, mapping.phone.column.clone()),
        user_identifier,
        variables,
        overrides,
    })
}

/// One CSV row to a member, or the reason it is rejected.
pub(super) fn member_from_row(
    b: &BoundMapping,
    row: &[String],
    country_code: Option<&str>,
) -> Result<CohortMember, String> {
    let cell = |i: usize| row.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
    let missing = |col: &str| format!("missing required column {col:?}");
    let raw_phone = cell(b.phone.0).ok_or_else(|| missing(&b.phone.1))?;
    let phone = normalize_number(raw_phone, country_code)
        .map_err(|e| format!("invalid phone number {raw_phone:?}: {e}"))?
        .to_string();
    let user_identifier = match &b.user_identifier {
        Some((i, spec)) => match cell(*i) {
            Some(v) => v.to_owned(),
            None if spec.required => return Err(missing(&spec.column)),
            None => phone.clone(),
        },
        None => phone.clone(),
    };
    let mut app_variables = BTreeMap::new();
    for (name, i, spec) in &b.variables {
        match cell(*i) {
            Some(v) => {
                app_variables.insert(name.clone(), v.to_owned());
            }
            None if spec.required => return Err(missing(&spec.column)),
            None => {}
        }
    }
    let mut app_overrides = AppOverrides::default();
    for (field, i, spec) in &b.overrides {
        match cell(*i) {
            Some(v) => field.set(&mut app_overrides, v.to_owned()),
            None if spec.required => return Err(missing(&spec.column)),
            None => {}
        }
    }
    Ok(CohortMember {
        phone_number: phone,
        user_identifier,
        app_variables,
        app_overrides,
    })
}

// ---------------------------------------------------------------------------------------------
// Ingestion: rows in, batches to the writer task, cohort record kept current.
