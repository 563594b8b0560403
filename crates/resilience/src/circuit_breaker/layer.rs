use tower_layer::Layer;

use super::{Breaker, CircuitBreaker, DefaultClassifier};

/// Wraps services in a [`CircuitBreaker`] that shares one [`Breaker`].
///
/// Cloning the layer or calling [`Layer::layer`] many times never creates a new breaker: all
/// services made from this layer open and close together.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: Breaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer over `breaker` that counts errors as failures (see [`DefaultClassifier`]).
    #[must_use]
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses `classifier` to decide which results are failures.
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The shared breaker.
    #[must_use]
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}
