//! Following page tokens to the end: one pager for the CLI, the tests and the conformance
//! suites, whatever they page over (gRPC lists, read-model queries).

use std::future::Future;

/// A lister handed back the token it was just given: following it would never end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the same page token was returned twice ({0:?}); stopping")]
pub struct RepeatedToken(pub String);

/// Fetches pages from `first_token` on and concatenates their items: `fetch_page` gets a page
/// token (`None` for the first page) and returns that page's items and the next token (`None`
/// on the last page). A token handed back twice in a row is an error, not an endless loop.
pub async fn collect_pages<T, E, F, Fut>(
    first_token: Option<String>,
    mut fetch_page: F,
) -> Result<Vec<T>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), E>>,
    E: From<RepeatedToken>,
{
    let mut items = Vec::new();
    let mut token = first_token;
    loop {
        let (page, next) = fetch_page(token.clone()).await?;
        items.extend(page);
        match next {
            None => return Ok(items),
            Some(next) if token.as_deref() == Some(next.as_str()) => {
                return Err(RepeatedToken(next).into());
            }
            Some(next) => token = Some(next),
        }
    }
}

/// An empty token means "no more pages" on the gRPC API: this maps it to `None`.
pub fn non_empty(token: String) -> Option<String> {
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[derive(Debug, PartialEq)]
    enum Failure {
        Repeated(String),
        Fetch(&'static str),
    }

    impl From<RepeatedToken> for Failure {
        fn from(e: RepeatedToken) -> Self {
            Self::Repeated(e.0)
        }
    }

    #[test]
    fn pages_are_concatenated_in_order_until_the_last() {
        let pages = block_on(collect_pages(None, |token: Option<String>| async move {
            Ok::<_, Failure>(match token.as_deref() {
                None => (vec![1, 2], Some("b".to_string())),
                Some("b") => (vec![3], Some("c".to_string())),
                Some("c") => (vec![], Some("d".to_string())),
                Some("d") => (vec![4], None),
                other => panic!("unexpected token {other:?}"),
            })
        }));
        assert_eq!(pages, Ok(vec![1, 2, 3, 4]));
    }

    #[test]
    fn a_repeated_token_and_a_failed_fetch_are_errors() {
        let repeated = block_on(collect_pages(Some("x".into()), |_| async {
            Ok::<(Vec<u8>, _), Failure>((vec![1], Some("x".to_string())))
        }));
        assert_eq!(repeated, Err(Failure::Repeated("x".into())));
        let failed = block_on(collect_pages(None, |_| async {
            Err::<(Vec<u8>, Option<String>), _>(Failure::Fetch("down"))
        }));
        assert_eq!(failed, Err(Failure::Fetch("down")));
        assert_eq!(non_empty(String::new()), None);
        assert_eq!(non_empty("t".into()), Some("t".into()));
    }
}
