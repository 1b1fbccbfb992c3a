//! Rich parameter resolution and validation, with coderd's rules and
//! messages: a value comes from the request, else the previous build (unless
//! the parameter is ephemeral), else the default; then it must satisfy the
//! parameter's options, type, range, regex and monotonicity. Messages are
//! those of coderd v2.36.1's dynamic parameter flow, the default of new
//! templates: `<summary>; <detail>` per parameter.

use crate::seed::Parameter;

/// One failed parameter: `field` is the parameter name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterError {
    pub field: String,
    pub detail: String,
}

/// Values as `(name, value)` pairs, in the order of the version's parameters.
pub type Values = Vec<(String, String)>;

pub fn resolve(
    parameters: &[Parameter],
    given: &[(String, String)],
    previous: &[(String, String)],
) -> Result<Values, Vec<ParameterError>> {
    let lookup =
        |values: &[(String, String)], name: &str| values.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut resolved = Vec::with_capacity(parameters.len());
    let mut errors = Vec::new();
    for parameter in parameters {
        let name = &parameter.name;
        let new_value = lookup(given, name);
        let old_value = lookup(previous, name);
        let fail = |detail: String| ParameterError { field: name.clone(), detail };
        if let (Some(new), Some(old)) = (&new_value, &old_value)
            && !parameter.mutable
            && new != old
        {
            errors.push(fail(format!(
                "Immutable parameter changed; Parameter {name:?} is not mutable, so it can't be updated after \
                 creating a workspace."
            )));
            continue;
        }
        if parameter.required && new_value.is_none() && old_value.is_none() {
            errors.push(fail("Required parameter not provided; parameter value is null".to_owned()));
            continue;
        }
        let value = new_value
            .or_else(|| old_value.clone().filter(|_| !parameter.ephemeral))
            .unwrap_or_else(|| parameter.default_value.clone());
        match validate(parameter, &value, old_value.as_deref()) {
            Ok(value) => resolved.push((name.clone(), value)),
            Err(detail) => errors.push(fail(detail)),
        }
    }
    if errors.is_empty() { Ok(resolved) } else { Err(errors) }
}

/// The value to use, or the detail of a validation error.
fn validate(parameter: &Parameter, value: &str, previous: Option<&str>) -> Result<String, String> {
    if parameter.required && value.is_empty() {
        return Err("Required parameter not provided; parameter value is null".to_owned());
    }
    let value = if value.is_empty() { parameter.default_value.as_str() } else { value };
    if !parameter.options.is_empty() {
        if parameter.options.iter().any(|option| option.value == value) {
            return Ok(value.to_owned());
        }
        return Err(format!("Value must be a valid option; the value {value:?} must be defined as one of options"));
    }
    check(parameter, value, previous)
        .map_err(|reason| format!("Invalid parameter value according to 'validation' block; {reason}"))
}

/// Type, range, regex and monotonicity: the reason a value fails them.
fn check(parameter: &Parameter, value: &str, previous: Option<&str>) -> Result<String, String> {
    let custom = |default: String| {
        if parameter.validation_error.is_empty() { default } else { parameter.validation_error.clone() }
    };
    match parameter.kind.as_str() {
        "number" => {
            let number: i64 = value.parse().map_err(|_| custom(format!("value {value:?} is not a number")))?;
            if let Some(min) = parameter.validation_min
                && number < i64::from(min)
            {
                return Err(custom(format!("value {number} is less than the minimum {min}")));
            }
            if let Some(max) = parameter.validation_max
                && number > i64::from(max)
            {
                return Err(custom(format!("value {number} is more than the maximum {max}")));
            }
            if let Some(old) = previous.and_then(|old| old.parse::<i64>().ok()) {
                match parameter.validation_monotonic.as_str() {
                    "increasing" if number < old => {
                        return Err(format!(
                            "parameter value '{number}' must be equal or greater than previous value: {old}"
                        ));
                    }
                    "decreasing" if number > old => {
                        return Err(format!(
                            "parameter value '{number}' must be equal or lower than previous value: {old}"
                        ));
                    }
                    _ => {}
                }
            }
        }
        "bool" if value != "true" && value != "false" => {
            return Err(r#"boolean value can be either "true" or "false""#.to_owned());
        }
        "list(string)" if serde_json::from_str::<Vec<String>>(value).is_err() => {
            return Err(format!("{value:?} is not a valid list of strings"));
        }
        _ => {}
    }
    if !parameter.validation_regex.is_empty() {
        let regex =
            regex::Regex::new(&parameter.validation_regex).map_err(|err| format!("invalid validation regex: {err}"))?;
        if !regex.is_match(value) {
            let mismatch = format!("value {value:?} does not match {:?}", parameter.validation_regex);
            return Err(if parameter.validation_error.is_empty() {
                mismatch
            } else {
                format!("{} ({mismatch})", parameter.validation_error)
            });
        }
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::ParameterOption;

    fn number(name: &str, default: &str, min: i32, max: i32) -> Parameter {
        serde_json::from_value(serde_json::json!({
            "name": name, "type": "number", "default_value": default,
            "validation_min": min, "validation_max": max,
        }))
        .unwrap()
    }

    fn pairs(values: &[(&str, &str)]) -> Values {
        values.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_fill_missing_values() {
        let params = [number("cpu", "2", 1, 8)];
        assert_eq!(resolve(&params, &[], &[]), Ok(pairs(&[("cpu", "2")])));
    }

    #[test]
    fn previous_values_carry_over() {
        let params = [number("cpu", "2", 1, 8)];
        assert_eq!(resolve(&params, &[], &pairs(&[("cpu", "6")])), Ok(pairs(&[("cpu", "6")])));
    }

    #[test]
    fn out_of_range_numbers_are_rejected() {
        let params = [number("cpu", "2", 1, 8)];
        let errors = resolve(&params, &pairs(&[("cpu", "9")]), &[]).unwrap_err();
        assert_eq!(errors[0].field, "cpu");
        assert_eq!(
            errors[0].detail,
            "Invalid parameter value according to 'validation' block; value 9 is more than the maximum 8"
        );
    }

    #[test]
    fn required_parameters_must_be_given() {
        let mut param = number("gpus", "", 1, 8);
        param.required = true;
        let errors = resolve(&[param], &[], &[]).unwrap_err();
        assert_eq!(errors[0].detail, "Required parameter not provided; parameter value is null");
    }

    #[test]
    fn values_must_be_one_of_the_options() {
        let mut param = number("size", "s", 0, 0);
        param.kind = "string".to_owned();
        param.options = ["s", "m"]
            .iter()
            .map(|v| ParameterOption {
                name: v.to_string(),
                value: v.to_string(),
                description: String::new(),
                icon: String::new(),
            })
            .collect();
        let errors = resolve(&[param], &pairs(&[("size", "xl")]), &[]).unwrap_err();
        assert_eq!(
            errors[0].detail,
            r#"Value must be a valid option; the value "xl" must be defined as one of options"#
        );
    }

    #[test]
    fn immutable_parameters_cannot_change() {
        let mut param = number("disk", "10", 1, 100);
        param.mutable = false;
        let errors = resolve(&[param], &pairs(&[("disk", "20")]), &pairs(&[("disk", "10")])).unwrap_err();
        assert!(errors[0].detail.starts_with("Immutable parameter changed; Parameter \"disk\" is not mutable"));
    }
}
