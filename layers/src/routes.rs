//! Which events a layer chooses, by target prefix, and the namespace that names them.

use crate::filter::ExceptSpanEvents;
use crate::NAMESPACE_SEPARATOR;

/// The target prefixes a layer chooses, longest first, so that the first match is the most
/// specific one.
#[derive(Debug, Default)]
pub(crate) struct Routes(Vec<Route>);

/// Where the events of one target prefix go.
#[derive(Debug)]
pub(crate) struct Route {
    target_prefix: Box<str>,
    /// The namespace and its separator (`"journey."`), or nothing for an empty namespace.
    pub(crate) name_prefix: Box<str>,
}

impl Routes {
    /// Chooses the targets that start with `target_prefix`, replacing the namespace of a prefix
    /// given before.
    pub(crate) fn insert(&mut self, target_prefix: &str, namespace: &str) {
        let target_prefix = Box::<str>::from(target_prefix);
        let name_prefix = if namespace.is_empty() {
            Box::default()
        } else {
            format!("{namespace}{NAMESPACE_SEPARATOR}").into_boxed_str()
        };
        self.0.retain(|route| route.target_prefix != target_prefix);
        self.0.push(Route {
            target_prefix,
            name_prefix,
        });
        self.0
            .sort_by_key(|route| std::cmp::Reverse(route.target_prefix.len()));
    }

    /// The route of the longest prefix that `target` starts with.
    pub(crate) fn find(&self, target: &str) -> Option<&Route> {
        self.0
            .iter()
            .find(|route| target.starts_with(&*route.target_prefix))
    }

    /// The filter that keeps `tracing_opentelemetry`'s layer away from these targets' events.
    pub(crate) fn otel_filter(&self) -> ExceptSpanEvents {
        ExceptSpanEvents::new(self.0.iter().map(|route| route.target_prefix.clone()))
    }
}
