//! Which events a reader wants: by tenant, stream and type.

use spool_schemas::{StreamName, TenantId};

/// A type name, or a prefix written `order.*` matching `order.created` and
/// `order.shipped.late`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeFilter {
    Exact(String),
    /// The prefix including its trailing dot: `order.`.
    Prefix(String),
}

impl TypeFilter {
    /// `order.*` becomes a prefix filter; anything else an exact one.
    pub fn parse(text: &str) -> TypeFilter {
        match text.strip_suffix('*') {
            Some(prefix) if prefix.is_empty() || prefix.ends_with('.') => {
                TypeFilter::Prefix(prefix.to_owned())
            }
            _ => TypeFilter::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, type_name: &str) -> bool {
        match self {
            TypeFilter::Exact(name) => name == type_name,
            TypeFilter::Prefix(prefix) => type_name.starts_with(prefix.as_str()),
        }
    }
}

/// All conditions must hold; an empty `types` list matches every type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub tenant: Option<TenantId>,
    pub stream: Option<StreamName>,
    pub types: Vec<TypeFilter>,
}

impl Filter {
    pub fn tenant(tenant: TenantId) -> Filter {
        Filter { tenant: Some(tenant), ..Filter::default() }
    }

    pub fn matches(&self, event: &crate::StoredEvent) -> bool {
        self.tenant.is_none_or(|tenant| tenant == event.tenant)
            && self.stream.as_ref().is_none_or(|stream| *stream == event.stream)
            && (self.types.is_empty() || self.types.iter().any(|t| t.matches(&event.type_name)))
    }
}

#[cfg(test)]
mod tests {
    use super::TypeFilter;

    #[test]
    fn a_trailing_dot_star_is_a_prefix_and_anything_else_is_exact() {
        assert_eq!(TypeFilter::parse("order.*"), TypeFilter::Prefix("order.".into()));
        assert_eq!(TypeFilter::parse("*"), TypeFilter::Prefix(String::new()));
        assert_eq!(TypeFilter::parse("order*"), TypeFilter::Exact("order*".into()));
        assert!(TypeFilter::parse("order.*").matches("order.shipped.late"));
        assert!(!TypeFilter::parse("order.*").matches("orders.created"));
        assert!(!TypeFilter::parse("order.created").matches("order.created.v2"));
    }
}
