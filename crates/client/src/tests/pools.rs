use std::time::Duration;

use warren_api::{CreateSandboxRequest, PoolSpec, Resources};
use warren_server::testing::TestServer;

use crate::Client;

#[tokio::test]
async fn put_list_get_claim_delete() {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    let spec = PoolSpec {
        size: 1,
        resources: Some(Resources {
            memory_mib: Some(128),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = c.put_pool("small", &spec).await.unwrap();
    assert_eq!((p.name.as_str(), p.size), ("small", 1));
    let mut ready = 0;
    for _ in 0..500 {
        ready = c.get_pool("small").await.unwrap().ready;
        if ready == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 1);
    assert_eq!(c.list_pools().await.unwrap().len(), 1);
    let sb = c
        .create_sandbox(&CreateSandboxRequest {
            pool: Some("small".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.pool.as_deref(), Some("small"));
    assert_eq!(sb.resources.memory_mib, Some(128));
    c.delete_pool("small").await.unwrap();
    let err = c.get_pool("small").await.unwrap_err();
    assert_eq!(err.code(), Some("pool_not_found"));
    let err = c.delete_pool("small").await.unwrap_err();
    assert_eq!(err.code(), Some("pool_not_found"));
    // The claimed sandbox is the user's and stays.
    assert_eq!(
        c.get_sandbox(&sb.id).await.unwrap().pool.as_deref(),
        Some("small")
    );
}
