//! Warm pools: ready sandboxes that a create takes without a cold start.

use reqwest::Method;
use warren_api::{Pool, PoolSpec};

use crate::{check, Client, Error};

impl Client {
    /// `PUT /v1/pools/{name}`: define or redefine a pool; it fills in the background.
    pub async fn put_pool(&self, name: &str, spec: &PoolSpec) -> Result<Pool, Error> {
        self.call(Method::PUT, &["v1", "pools", name], Some(spec))
            .await
    }

    /// `GET /v1/pools`: every pool with its `ready`, `filling` and `claimed` counts.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, Error> {
        self.call(Method::GET, &["v1", "pools"], None::<&()>).await
    }

    /// `GET /v1/pools/{name}`.
    pub async fn get_pool(&self, name: &str) -> Result<Pool, Error> {
        self.call(Method::GET, &["v1", "pools", name], None::<&()>)
            .await
    }

    /// `DELETE /v1/pools/{name}`: the pool and its unclaimed sandboxes (sandboxes already
    /// claimed from it stay).
    pub async fn delete_pool(&self, name: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::DELETE, &["v1", "pools", name])
            .send()
            .await?;
        check(resp).await.map(drop)
    }
}
