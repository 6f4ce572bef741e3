//! The method table: one handler per method name, typed by [`Method`] so the
//! params a handler receives and the result it returns are the protocol's own
//! types. Handlers return domain errors; unknown methods, bad params, the
//! conversion of a domain error (crate::rpc::errors) and of a result to JSON
//! happen here and nowhere else.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use banger_proto::methods::Method;
use banger_proto::{ErrorKind, RpcError};
use serde_json::Value;

use crate::app::App;
use crate::caller::Ctx;
use crate::error::Error;

type BoxFut = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;
type Handler = Box<dyn Fn(Arc<App>, Ctx, Value) -> BoxFut + Send + Sync>;

#[derive(Default)]
pub struct Table {
    handlers: HashMap<&'static str, Handler>,
}

impl Table {
    /// Registers `f` as the handler of `M`.
    pub fn add<M, F, Fut>(&mut self, f: F)
    where
        M: Method,
        F: Fn(Arc<App>, Ctx, M::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Result, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        let h: Handler = Box::new(move |d, ctx, params| {
            let f = f.clone();
            Box::pin(async move {
                let p = parse_params::<M::Params>(params)?;
                let r = f(d, ctx, p).await.map_err(RpcError::from)?;
                serde_json::to_value(r).map_err(|e| RpcError::internal(e.to_string()))
            })
        });
        let clash = self.handlers.insert(M::NAME, h);
        assert!(clash.is_none(), "method {} registered twice", M::NAME);
    }

    pub fn has(&self, method: &str) -> bool {
        self.handlers.contains_key(method)
    }

    pub async fn call(
        &self,
        d: Arc<App>,
        ctx: Ctx,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError> {
        match self.handlers.get(method) {
            Some(h) => h(d, ctx, params).await,
            None => Err(RpcError::new(
                ErrorKind::MethodNotFound,
                format!("unknown method {method:?}"),
            )
            .with("method", method)),
        }
    }
}

fn parse_params<P: serde::de::DeserializeOwned>(v: Value) -> Result<P, RpcError> {
    // JSON-RPC allows omitting params; every method takes named params (an
    // object). serde would map an array onto a struct by position, silently.
    let v = match v {
        Value::Null => Value::Object(Default::default()),
        Value::Array(_) => {
            return Err(RpcError::invalid_params(
                "params must be an object (banger methods take named parameters)",
            ))
        }
        v => v,
    };
    serde_json::from_value(v).map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))
}
