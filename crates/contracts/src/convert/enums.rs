//! The closed enums of the API (execution statuses, parameter types, output formats,
//! comparison operators) and the paging fields (sort order, page size).

use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::limits::{PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use fleetcmd_domain::model::{ComparisonOperator, ExecutionStatus, OutputFormat, ParameterType};

use super::{bad_enum, closed_enum};
use crate::pb;

closed_enum! {
    /// An `ExecutionStatus` number; UNSPECIFIED or unknown is an error naming `field`.
    pub fn status_from_pb: ExecutionStatus => pb::ExecutionStatus {
        Created => Created,
        InProgress => InProgress,
        Succeeded => Succeeded,
        Failed => Failed,
        Rejected => Rejected,
        TimedOut => TimedOut,
        Canceled => Canceled,
    }
}

/// The `i32` a message's `ExecutionStatus` field holds.
pub fn status_to_pb(status: ExecutionStatus) -> i32 {
    pb::ExecutionStatus::from(status) as i32
}

closed_enum! {
    /// A `ParameterType` number; UNSPECIFIED or unknown is an error naming `field`.
    pub fn parameter_type_from_pb: ParameterType => pb::ParameterType {
        String => String,
        Integer => Integer,
        Double => Double,
        Long => Long,
        UnsignedLong => Unsignedlong,
        Boolean => Boolean,
        Binary => Binary,
    }
}

impl From<OutputFormat> for pb::OutputFormat {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Json => Self::Json,
            OutputFormat::Cbor => Self::Cbor,
        }
    }
}

/// An `OutputFormat` number: UNSPECIFIED means JSON (the proto's default); unknown is an
/// error naming `field`.
pub fn output_format_from_pb(field: &str, value: i32) -> Result<OutputFormat, ValidationError> {
    match pb::OutputFormat::try_from(value) {
        Ok(pb::OutputFormat::Unspecified | pb::OutputFormat::Json) => Ok(OutputFormat::Json),
        Ok(pb::OutputFormat::Cbor) => Ok(OutputFormat::Cbor),
        Err(_) => Err(bad_enum(field, "JSON, CBOR", value)),
    }
}

closed_enum! {
    /// A `ComparisonOperator` number; UNSPECIFIED or unknown is an error naming `field`.
    pub fn comparison_operator_from_pb: ComparisonOperator => pb::ComparisonOperator {
        Equals => Equals,
        NotEquals => NotEquals,
        LessThan => LessThan,
        LessThanEquals => LessThanEquals,
        GreaterThan => GreaterThan,
        GreaterThanEquals => GreaterThanEquals,
        InSet => InSet,
        NotInSet => NotInSet,
        InRange => InRange,
        NotInRange => NotInRange,
    }
}

/// `sort_order`: ASCENDING → `true`; UNSPECIFIED and DESCENDING → `false` (the default is
/// descending); unknown is an error naming `sort_order`.
pub fn sort_ascending_from_pb(value: i32) -> Result<bool, ValidationError> {
    match pb::SortOrder::try_from(value) {
        Ok(pb::SortOrder::Ascending) => Ok(true),
        Ok(pb::SortOrder::Unspecified | pb::SortOrder::Descending) => Ok(false),
        Err(_) => Err(bad_enum("sort_order", "ASCENDING, DESCENDING", value)),
    }
}

/// `max_results`: 0 (unset) → [`PAGE_SIZE_DEFAULT`]; 1–[`PAGE_SIZE_MAX`] as given; anything
/// else is an error naming `max_results`.
pub fn page_size_from_pb(max_results: i32) -> Result<u32, ValidationError> {
    if max_results == 0 {
        return Ok(PAGE_SIZE_DEFAULT);
    }
    match u32::try_from(max_results) {
        Ok(n) if (1..=PAGE_SIZE_MAX).contains(&n) => Ok(n),
        _ => Err(ValidationError::new(
            "max_results",
            format!(
                "must be between 1 and {PAGE_SIZE_MAX} (0 means {PAGE_SIZE_DEFAULT}), got {max_results}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::test_support::err_field;

    #[test]
    fn every_status_maps_both_ways() {
        let table = [
            (ExecutionStatus::Created, pb::ExecutionStatus::Created, 1),
            (
                ExecutionStatus::InProgress,
                pb::ExecutionStatus::InProgress,
                2,
            ),
            (
                ExecutionStatus::Succeeded,
                pb::ExecutionStatus::Succeeded,
                3,
            ),
            (ExecutionStatus::Failed, pb::ExecutionStatus::Failed, 4),
            (ExecutionStatus::Rejected, pb::ExecutionStatus::Rejected, 5),
            (ExecutionStatus::TimedOut, pb::ExecutionStatus::TimedOut, 6),
            (ExecutionStatus::Canceled, pb::ExecutionStatus::Canceled, 7),
        ];
        assert_eq!(table.len(), ExecutionStatus::ALL.len());
        for (domain, proto, number) in table {
            assert_eq!(pb::ExecutionStatus::from(domain), proto);
            assert_eq!(status_to_pb(domain), number);
            assert_eq!(status_from_pb("status", number), Ok(domain));
            // The wire names agree too.
            assert_eq!(proto.as_str_name(), domain.as_str());
        }
    }

    #[test]
    fn unspecified_or_unknown_status_names_the_field() {
        let e = status_from_pb("status", 0).unwrap_err();
        assert_eq!(e.field, "status");
        assert!(e.message.contains("EXECUTION_STATUS_UNSPECIFIED"), "{e}");
        assert!(e.message.contains("CANCELED"), "{e}");
        // The list is built from the conversion table: every name, in wire order.
        assert_eq!(
            e.message,
            "must be one of CREATED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, \
             CANCELED, got EXECUTION_STATUS_UNSPECIFIED"
        );
        let e = status_from_pb("statuses[3]", 8).unwrap_err();
        assert_eq!(e.field, "statuses[3]");
        assert!(e.message.contains('8'), "{e}");
        assert_eq!(err_field(status_from_pb("s", -1)), "s");
    }

    #[test]
    fn parameter_types_map_both_ways() {
        let table = [
            (ParameterType::String, "STRING"),
            (ParameterType::Integer, "INTEGER"),
            (ParameterType::Double, "DOUBLE"),
            (ParameterType::Long, "LONG"),
            (ParameterType::UnsignedLong, "UNSIGNEDLONG"),
            (ParameterType::Boolean, "BOOLEAN"),
            (ParameterType::Binary, "BINARY"),
        ];
        for (t, name) in table {
            let p = pb::ParameterType::from(t);
            assert_eq!(p.as_str_name(), name);
            assert_eq!(parameter_type_from_pb("type", p as i32), Ok(t));
        }
        let e = parameter_type_from_pb("mandatory_parameters[0].type", 0).unwrap_err();
        assert_eq!(e.field, "mandatory_parameters[0].type");
        assert!(e.message.contains("PARAMETER_TYPE_UNSPECIFIED"), "{e}");
        assert_eq!(err_field(parameter_type_from_pb("type", 8)), "type");
    }

    #[test]
    fn output_formats_map_both_ways_and_default_to_json() {
        for f in [OutputFormat::Json, OutputFormat::Cbor] {
            assert_eq!(
                output_format_from_pb("f", pb::OutputFormat::from(f) as i32),
                Ok(f)
            );
        }
        assert_eq!(
            pb::OutputFormat::from(OutputFormat::Cbor),
            pb::OutputFormat::Cbor
        );
        assert_eq!(output_format_from_pb("f", 0), Ok(OutputFormat::Json));
        let e = output_format_from_pb("preprocessor.x", 3).unwrap_err();
        assert_eq!(e.field, "preprocessor.x");
        assert!(e.message.contains("JSON, CBOR"), "{e}");
    }

    #[test]
    fn comparison_operators_map_both_ways() {
        let mut numbers = Vec::new();
        for op in ComparisonOperator::ALL {
            let n = pb::ComparisonOperator::from(op) as i32;
            numbers.push(n);
            assert_eq!(comparison_operator_from_pb("op", n), Ok(op));
        }
        assert_eq!(
            numbers,
            (1..=10).collect::<Vec<_>>(),
            "each operator has its own number"
        );
        assert_eq!(
            pb::ComparisonOperator::from(ComparisonOperator::NotInRange).as_str_name(),
            "NOT_IN_RANGE"
        );
        let e = comparison_operator_from_pb("c.comparison_operator", 0).unwrap_err();
        assert_eq!(e.field, "c.comparison_operator");
        assert!(e.message.contains("COMPARISON_OPERATOR_UNSPECIFIED"), "{e}");
        assert_eq!(err_field(comparison_operator_from_pb("op", 11)), "op");
    }

    #[test]
    fn sort_order_and_page_size() {
        assert_eq!(sort_ascending_from_pb(0), Ok(false));
        assert_eq!(
            sort_ascending_from_pb(pb::SortOrder::Ascending as i32),
            Ok(true)
        );
        assert_eq!(
            sort_ascending_from_pb(pb::SortOrder::Descending as i32),
            Ok(false)
        );
        assert_eq!(err_field(sort_ascending_from_pb(3)), "sort_order");

        assert_eq!(page_size_from_pb(0), Ok(PAGE_SIZE_DEFAULT));
        assert_eq!(page_size_from_pb(0), Ok(25));
        assert_eq!(page_size_from_pb(1), Ok(1));
        assert_eq!(page_size_from_pb(100), Ok(100));
        for bad in [101, -1, i32::MIN, i32::MAX] {
            let e = page_size_from_pb(bad).unwrap_err();
            assert_eq!(e.field, "max_results");
            assert!(e.message.contains("between 1 and 100"), "{e}");
            assert!(e.message.contains(&bad.to_string()), "{e}");
        }
    }
}
