//! The Kubernetes client every controller uses: kubeconfig or in-cluster config, behind a
//! layer that counts requests and, when asked to, limits their rate (a token bucket, like
//! client-go's). By default nothing is limited here: the API server's Priority and Fairness
//! paces clients, as SIG API Machinery advises and controller-runtime now defaults to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::Request;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::args::RuntimeArgs;
use crate::lock::Lock;
use crate::metrics::RequestMetrics;

/// Loads the configuration the arguments name.
pub async fn load_config(args: &RuntimeArgs) -> Result<Config, kube::Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(kube::Error::InferKubeconfig)
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(kube::Error::InferKubeconfig),
        None => Config::infer().await.map_err(kube::Error::InferConfig),
    }
}

/// Builds a client whose requests are counted and, when `qps` is above zero, rate-limited.
pub fn build_client(config: Config, qps: f64, burst: u32, metrics: RequestMetrics) -> Result<Client, kube::Error> {
    let layer = RateLimitLayer::new(qps, burst, metrics);
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

/// A token bucket: `burst` tokens, refilled at `qps` per second.
#[derive(Debug)]
struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(0.001),
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

/// Tower layer counting requests and applying the rate limit, if any.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    bucket: Option<Arc<Lock<TokenBucket>>>,
    metrics: RequestMetrics,
}

impl RateLimitLayer {
    /// A limit of `qps` sustained requests per second with bursts of `burst`; none when `qps`
    /// is zero or less.
    pub fn new(qps: f64, burst: u32, metrics: RequestMetrics) -> Self {
        Self {
            bucket: (qps > 0.0).then(|| Arc::new(Lock::new(TokenBucket::new(qps, burst)))),
            metrics,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            metrics: self.metrics.clone(),
            delay: None,
            has_token: false,
        }
    }
}

/// The rate-limited service. kube's client puts a buffer in front of it, so waiting in
/// `poll_ready` delays dispatch without holding up responses already in flight.
pub struct RateLimit<S> {
    inner: S,
    bucket: Option<Arc<Lock<TokenBucket>>>,
    metrics: RequestMetrics,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    has_token: bool,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("has_token", &self.has_token).finish()
    }
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.has_token {
            let Some(bucket) = &self.bucket else {
                self.has_token = true;
                break;
            };
            if let Some(delay) = self.delay.as_mut() {
                ready!(delay.as_mut().poll(cx));
                self.delay = None;
            }
            // A poisoned lock only means another thread panicked mid-update; the bucket is
            // still a valid number of tokens.
            let taken = bucket.lock().take(Instant::now());
            match taken {
                Ok(()) => self.has_token = true,
                Err(wait) => {
                    self.metrics.throttled();
                    self.delay = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.has_token = false;
        self.metrics.request(request.method(), request.uri().path());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_paces_at_qps() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("the burst is spent");
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-9,
            "one token takes 1/qps: {wait:?}"
        );
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn no_bucket_unless_a_rate_is_asked_for() {
        assert!(
            RateLimitLayer::new(0.0, 400, RequestMetrics::default())
                .bucket
                .is_none()
        );
        assert!(
            RateLimitLayer::new(50.0, 100, RequestMetrics::default())
                .bucket
                .is_some()
        );
    }

    #[test]
    fn bucket_never_holds_more_than_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 2);
        let later = start + Duration::from_secs(60);
        assert_eq!(bucket.take(later), Ok(()));
        assert_eq!(bucket.take(later), Ok(()));
        assert!(bucket.take(later).is_err());
    }
}
