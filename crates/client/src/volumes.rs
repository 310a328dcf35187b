//! Named volumes: directories that outlive sandboxes.

use reqwest::Method;
use warren_api::{CreateVolumeRequest, Volume, VolumeList};

use crate::{check, Client, Error};

impl Client {
    /// `POST /v1/volumes`: an empty volume (`size_mib` where the server enforces it).
    pub async fn create_volume(&self, name: &str, size_mib: Option<u64>) -> Result<Volume, Error> {
        let req = CreateVolumeRequest {
            name: name.to_string(),
            size_mib,
        };
        self.call(Method::POST, &["v1", "volumes"], Some(&req))
            .await
    }

    /// `GET /v1/volumes`.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, Error> {
        let list: VolumeList = self
            .call(Method::GET, &["v1", "volumes"], None::<&()>)
            .await?;
        Ok(list.volumes)
    }

    /// `GET /v1/volumes/{name}`.
    pub async fn get_volume(&self, name: &str) -> Result<Volume, Error> {
        self.call(Method::GET, &["v1", "volumes", name], None::<&()>)
            .await
    }

    /// `DELETE /v1/volumes/{name}` (`volume_in_use` while a sandbox mounts it).
    pub async fn delete_volume(&self, name: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::DELETE, &["v1", "volumes", name])
            .send()
            .await?;
        check(resp).await.map(drop)
    }
}
