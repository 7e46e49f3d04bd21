//! The registry of the admin API's routes: [`Routes`] wraps axum's `Router` and records the
//! method and path of every operation added, so what is served is known in code (and a unit test
//! in `openapi.rs` holds it equal to `openapi.json`).
//!
//! It has the shape of axum's: `Routes::new().route("/queue/{id}", get(show).post(bulk))`, with
//! [`get`], [`post`], [`put`] and [`delete`] from here instead of `axum::routing`. A layer for
//! one route goes on with [`Methods::map`] (`post(h).map(|m| m.layer(...))`).

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{self, MethodRouter};

/// The handlers of one path, by method, and the methods they answer.
pub struct Methods<S> {
    router: MethodRouter<S>,
    methods: Vec<Method>,
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        /// A route answering this method with `handler` (as axum's function of the same name).
        #[allow(
            dead_code,
            reason = "every method is offered, whether a route starts with it or not"
        )]
        pub fn $name<H, T, S>(handler: H) -> Methods<S>
        where
            H: Handler<T, S>,
            T: 'static,
            S: Clone + Send + Sync + 'static,
        {
            Methods {
                router: routing::$name(handler),
                methods: vec![Method::$method],
            }
        }

        impl<S: Clone + Send + Sync + 'static> Methods<S> {
            /// This method too, answered by `handler`.
            pub fn $name<H, T>(mut self, handler: H) -> Self
            where
                H: Handler<T, S>,
                T: 'static,
            {
                self.router = self.router.$name(handler);
                self.methods.push(Method::$method);
                self
            }
        }
    };
}

method!(get, GET);
method!(post, POST);
method!(put, PUT);
method!(delete, DELETE);

impl<S> Methods<S> {
    /// Changes the axum method router (a layer, a body limit); the methods stay recorded.
    pub fn map(mut self, f: impl FnOnce(MethodRouter<S>) -> MethodRouter<S>) -> Self {
        self.router = f(self.router);
        self
    }
}

/// An axum router that knows its operations.
pub struct Routes<S> {
    router: Router<S>,
    served: Vec<(Method, String)>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    /// `path` answered by `methods` (axum's path syntax: `{id}`, `{*rest}`).
    pub fn route(mut self, path: &str, methods: Methods<S>) -> Self {
        let documented = path.replace("{*", "{");
        self.served
            .extend(methods.methods.into_iter().map(|m| (m, documented.clone())));
        self.router = self.router.route(path, methods.router);
        self
    }

    /// Every route of `other` too.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.served.extend(other.served);
        self.router = self.router.merge(other.router);
        self
    }

    /// Every route of `other` under `prefix` (`/api/v1`).
    pub fn nest(mut self, prefix: &str, other: Routes<S>) -> Self {
        self.served
            .extend(other.served.into_iter().map(|(m, p)| (m, format!("{prefix}{p}"))));
        self.router = self.router.nest(prefix, other.router);
        self
    }

    /// Every operation: its method and its path (`{name}` for every parameter).
    pub fn served(&self) -> &[(Method, String)] {
        &self.served
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_every_method_and_path() {
        let inner: Routes<()> = Routes::new()
            .route("/a", get(|| async {}).post(|| async {}))
            .route("/b/{*key}", put(|| async {}).delete(|| async {}));
        let routes = Routes::new().route("/x", get(|| async {})).nest("/api", inner);
        let served: Vec<(String, String)> = routes
            .served()
            .iter()
            .map(|(m, p)| (m.to_string(), p.clone()))
            .collect();
        let expect = [
            ("GET", "/x"),
            ("GET", "/api/a"),
            ("POST", "/api/a"),
            ("PUT", "/api/b/{key}"),
            ("DELETE", "/api/b/{key}"),
        ];
        let expect: Vec<(String, String)> = expect.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(served, expect);
    }
}
