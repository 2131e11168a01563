//! Every closed set of label values the exporter emits: image statuses, unreadable
//! fields, failure reasons and pagination anomalies.
//!
//! Each set is one enum declared with [`label_enum!`], which lists every variant
//! once with its label value, so that `ALL`, `label()` and `FromStr` can never
//! disagree. Counters over these sets are created at zero for every value, which is
//! what lets `rate()` and `increase()` work from the first scrape; that only holds
//! because `ALL` is complete, which the macro guarantees.

use std::fmt;

/// Declares an enum whose variants each carry one label value, with `ALL` (in
/// declaration order), `label()`, `index()` (the position in `ALL`) and `FromStr`.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The label value.
            pub fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                }
            }

            /// The position in [`Self::ALL`], for per-value arrays.
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownLabel;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $label => Ok($name::$variant), )+
                    _ => Err(UnknownLabel {
                        kind: stringify!($name),
                        value: s.to_string(),
                        expected: &[ $( $label, )+ ],
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.label())
            }
        }
    };
}

/// A label value that is not one of its set, with the values that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {}", expected.join(", "))]
pub struct UnknownLabel {
    /// Which set.
    pub kind: &'static str,
    /// What was given.
    pub value: String,
    /// The values of the set.
    pub expected: &'static [&'static str],
}

label_enum! {
    /// An image's status, from the upstream code: the `status` label.
    pub enum Status {
        /// Code 0.
        Creating => "creating",
        /// Code 1.
        Available => "available",
        /// Code 2: creation failed.
        Failed => "failed",
        /// Code 3.
        Expired => "expired",
        /// Any other code.
        Unknown => "unknown",
    }
}

impl Status {
    /// The status of an upstream code.
    pub fn from_code(code: i64) -> Status {
        match code {
            0 => Status::Creating,
            1 => Status::Available,
            2 => Status::Failed,
            3 => Status::Expired,
            _ => Status::Unknown,
        }
    }

    /// The upstream code, for the `status` filter (`Unknown` has none).
    pub fn code(self) -> Option<u8> {
        match self {
            Status::Creating => Some(0),
            Status::Available => Some(1),
            Status::Failed => Some(2),
            Status::Expired => Some(3),
            Status::Unknown => None,
        }
    }
}

label_enum! {
    /// An item field that could not be read: the `field` label of
    /// `finovy_api_invalid_items_total`. The item still counts.
    pub enum Field {
        /// `id`: missing or unreadable (the item cannot be told apart from others).
        Id => "id",
        /// `imageType`.
        ImageType => "imageType",
        /// `imageSize`.
        ImageSize => "imageSize",
        /// `datacenterKey`.
        DatacenterKey => "datacenterKey",
        /// `status`.
        Status => "status",
        /// `createTime`: unreadable, before 2000 or more than a day ahead.
        CreateTime => "createTime",
    }
}

label_enum! {
    /// Why a pass failed: the `reason` label of `finovy_refresh_failures_total`.
    pub enum Reason {
        /// The token was refused (HTTP 401/403 or `"code":401`) or could not be read.
        Auth => "auth",
        /// No answer within `--api.timeout`, or the pass outlived `--refresh.timeout`.
        Timeout => "timeout",
        /// The connection failed or broke.
        Connect => "connect",
        /// The upstream's certificate or the TLS handshake was refused (not retried).
        Tls => "tls",
        /// An HTTP status other than 200.
        Http => "http",
        /// The envelope reported an error.
        Api => "api",
        /// The answer could not be read, was too large, or is not a page.
        Decode => "decode",
        /// The pass went past the bound on the images or pages one pass may
        /// read (docs/bounds.md): the upstream's list does not end.
        Limit => "limit",
    }
}

impl Reason {
    /// The pagination anomaly a failure of this reason is also counted as:
    /// a pass stopped at its bound is a paging that did not add up.
    pub fn anomaly(self) -> Option<Anomaly> {
        match self {
            Reason::Limit => Some(Anomaly::PageLimit),
            _ => None,
        }
    }
}

label_enum! {
    /// A sign that the pages of a pass did not add up: the `kind` label of
    /// `finovy_pagination_anomalies_total`. A pass with any of them still publishes
    /// what it read, but never counts towards the lifecycle counters.
    pub enum Anomaly {
        /// An id came back on more than one page (counted once).
        DuplicateItems => "duplicate_items",
        /// `totalCounts` changed between pages.
        TotalChanged => "total_changed",
        /// The unique items seen differ from `totalCounts` at the end.
        TotalMismatch => "total_mismatch",
        /// Paging was cut off: a page brought nothing new before the planned end,
        /// or the page bound was hit (with reason `limit` when the pass failed
        /// at the bound on images or pages of docs/bounds.md).
        PageLimit => "page_limit",
        /// Items of another datacenter came back when one was asked for: the
        /// upstream seems to ignore `datacenterKey`.
        ForeignItems => "foreign_items",
    }
}

/// Label value for the image type: upstream's `imageType`, `unknown` when empty.
pub fn image_type_label(raw: &str) -> &str {
    if raw.is_empty() {
        "unknown"
    } else {
        raw
    }
}

/// The label value that groups folded by the cardinality limits are published
/// under (`image_type="other"`, `datacenter_key="other"`).
pub const OTHER: &str = "other";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_parses_back_to_its_value() {
        for s in Status::ALL {
            assert_eq!(s.label().parse::<Status>(), Ok(*s));
        }
        for r in Reason::ALL {
            assert_eq!(r.label().parse::<Reason>(), Ok(*r));
        }
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
        let err = "nope".parse::<Anomaly>().unwrap_err();
        assert!(err.to_string().contains("foreign_items"), "{err}");
    }

    #[test]
    fn status_codes_round_trip() {
        for s in Status::ALL {
            if let Some(code) = s.code() {
                assert_eq!(Status::from_code(i64::from(code)), *s);
            }
        }
        assert_eq!(Status::from_code(9), Status::Unknown);
    }
}
