//! What the preStop hook does to a container that takes no part in the protocol (no SDK
//! connected) once its deregister phase is over: the drain action. It is set per container
//! by the `lameduck.dev/drain` annotation (or the ShutdownPolicy's `spec.drain.action`),
//! checked by the webhook, and handed to the hook — which runs inside the app container —
//! through `LAMEDUCK_DRAIN_ACTION`.
//!
//! Forms (the annotation's and the environment's):
//!
//! | value | what the hook does |
//! |---|---|
//! | `signal:SIGQUIT` | sends the signal to the container's PID 1 (e.g. nginx's graceful stop) |
//! | `exec:nginx -s quit` | runs the command in the container (split on whitespace, no shell) |
//! | `exec:["/bin/sh","-c","kill -QUIT 1"]` | the same with the arguments as a JSON array |
//! | `http:8080/drain` | `POST http://127.0.0.1:8080/drain` and waits for the answer |
//! | `none` | nothing: the hook returns and the kubelet's SIGTERM follows |
//!
//! After `signal`, `exec` and `http` the hook waits until the container's listeners are
//! closed and its connections gone (the kernel's view), bounded by the phase budget.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The signals a drain action may send: the ones servers use for a graceful stop or a
/// reload. Numbers as on Linux (x86_64 and arm64 agree on these).
pub const SIGNALS: [(&str, i32); 7] = [
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
];

/// One container's drain action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainAction {
    /// Send this signal (canonical name, e.g. `SIGQUIT`) to the container's PID 1.
    Signal(String),
    /// Run this command (program and arguments) in the container.
    Exec(Vec<String>),
    /// `POST http://127.0.0.1:<port><path>`.
    Http {
        /// TCP port on loopback.
        port: u16,
        /// Request path, starting with `/`.
        path: String,
    },
    /// Do nothing: SIGTERM follows the hook.
    None,
}

/// A drain action that cannot be read, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("drain action {value:?}: {reason}")]
pub struct BadDrainAction {
    /// The value.
    pub value: String,
    /// What was expected instead.
    pub reason: String,
}

impl DrainAction {
    /// The signal's number, for [`DrainAction::Signal`].
    pub fn signal_number(&self) -> Option<i32> {
        match self {
            DrainAction::Signal(name) => signal_number(name),
            _ => None,
        }
    }
}

/// The number of a signal named `SIGQUIT`, `QUIT` or `quit`; `None` if it is not one of
/// [`SIGNALS`].
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase();
    let upper = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| &n[3..] == upper)
        .map(|(_, number)| *number)
}

impl FromStr for DrainAction {
    type Err = BadDrainAction;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BadDrainAction {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = value.trim();
        if trimmed.eq_ignore_ascii_case("none") {
            return Ok(DrainAction::None);
        }
        let (kind, rest) = trimmed.split_once(':').ok_or_else(|| {
            bad("expected signal:<NAME>, exec:<command>, http:<port><path> or none")
        })?;
        match kind.trim().to_ascii_lowercase().as_str() {
            "signal" => {
                let number = signal_number(rest).ok_or_else(|| {
                    bad("unknown signal: expected one of SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH")
                })?;
                let name = SIGNALS
                    .iter()
                    .find(|(_, n)| *n == number)
                    .map(|(name, _)| (*name).to_owned())
                    .unwrap_or_default();
                Ok(DrainAction::Signal(name))
            }
            "exec" => {
                let rest = rest.trim();
                let argv: Vec<String> = if rest.starts_with('[') {
                    serde_json::from_str(rest)
                        .map_err(|e| bad(&format!("not a JSON array of strings: {e}")))?
                } else {
                    rest.split_whitespace().map(str::to_owned).collect()
                };
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(bad("exec needs a command"));
                }
                Ok(DrainAction::Exec(argv))
            }
            "http" => {
                let rest = rest.trim();
                let (port, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, crate::drain::DRAIN_DEFAULTS.http_path),
                };
                let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    bad("http needs a port from 1 to 65535, e.g. http:8080/drain")
                })?;
                if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad("the path must not contain spaces"));
                }
                Ok(DrainAction::Http {
                    port,
                    path: path.to_owned(),
                })
            }
            _ => Err(bad(
                "expected signal:<NAME>, exec:<command>, http:<port><path> or none",
            )),
        }
    }
}

impl fmt::Display for DrainAction {
    /// The canonical form, which [`DrainAction::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainAction::Signal(name) => write!(f, "signal:{name}"),
            DrainAction::Exec(argv) => {
                // Whitespace inside an argument needs the JSON form to survive a round trip.
                if argv
                    .iter()
                    .any(|a| a.is_empty() || a.contains(char::is_whitespace))
                    || argv.first().is_some_and(|a| a.starts_with('['))
                {
                    write!(
                        f,
                        "exec:{}",
                        serde_json::to_string(argv).unwrap_or_default()
                    )
                } else {
                    write!(f, "exec:{}", argv.join(" "))
                }
            }
            DrainAction::Http { port, path } => write!(f, "http:{port}{path}"),
            DrainAction::None => f.write_str("none"),
        }
    }
}

/// The value of the `lameduck.dev/drain` annotation: one action for every selected
/// container (`signal:SIGQUIT`), or one per container (`web=signal:SIGQUIT;sidecar=none`,
/// separated by `;` or newlines; a container not named gets the default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainActions {
    /// The action for every container not named in `per_container`.
    pub all: Option<DrainAction>,
    /// Per container name.
    pub per_container: BTreeMap<String, DrainAction>,
}

impl DrainActions {
    /// The action of `container`, if the annotation sets one.
    pub fn for_container(&self, container: &str) -> Option<&DrainAction> {
        self.per_container.get(container).or(self.all.as_ref())
    }
}

/// Whether `s` is a container name (a DNS label), to tell `web=…` from an action.
fn is_container_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl FromStr for DrainActions {
    type Err = BadDrainAction;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let per_container_form = value
            .split_once('=')
            .is_some_and(|(name, _)| is_container_name(name.trim()));
        if !per_container_form {
            return Ok(DrainActions {
                all: Some(value.parse()?),
                per_container: BTreeMap::new(),
            });
        }
        let mut actions = DrainActions::default();
        for entry in value
            .split([';', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (name, action) = entry.split_once('=').ok_or_else(|| BadDrainAction {
                value: entry.to_owned(),
                reason: "expected <container>=<action>".to_owned(),
            })?;
            let name = name.trim();
            if !is_container_name(name) {
                return Err(BadDrainAction {
                    value: entry.to_owned(),
                    reason: format!("{name:?} is not a container name"),
                });
            }
            if actions
                .per_container
                .insert(name.to_owned(), action.parse()?)
                .is_some()
            {
                return Err(BadDrainAction {
                    value: entry.to_owned(),
                    reason: format!("container {name} is named twice"),
                });
            }
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_documented_forms_parse() {
        assert_eq!(
            "signal:SIGQUIT".parse(),
            Ok(DrainAction::Signal("SIGQUIT".into()))
        );
        assert_eq!(
            "signal:quit".parse(),
            Ok(DrainAction::Signal("SIGQUIT".into()))
        );
        assert_eq!(
            "exec:nginx -s quit".parse(),
            Ok(DrainAction::Exec(vec![
                "nginx".into(),
                "-s".into(),
                "quit".into()
            ]))
        );
        assert_eq!(
            r#"exec:["/bin/sh","-c","kill -QUIT 1"]"#.parse(),
            Ok(DrainAction::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                "kill -QUIT 1".into()
            ]))
        );
        assert_eq!(
            "http:8080/drain".parse(),
            Ok(DrainAction::Http {
                port: 8080,
                path: "/drain".into()
            })
        );
        assert_eq!(
            "http:9000".parse(),
            Ok(DrainAction::Http {
                port: 9000,
                path: "/drain".into()
            })
        );
        assert_eq!("none".parse(), Ok(DrainAction::None));
        assert_eq!(
            DrainAction::Signal("SIGQUIT".into()).signal_number(),
            Some(3)
        );
    }

    #[test]
    fn bad_actions_say_why() {
        for bad in [
            "",
            "sleep 5",
            "signal:SIGKILL",
            "signal:",
            "exec:",
            "exec:[1,2]",
            "exec:[\"\"]",
            "http:",
            "http:0/drain",
            "http:99999/drain",
            "http:80/a b",
            "teleport:now",
        ] {
            let err = bad.parse::<DrainAction>().unwrap_err();
            assert!(!err.reason.is_empty(), "{bad}");
        }
    }

    #[test]
    fn the_annotation_names_one_action_or_one_per_container() {
        let all: DrainActions = "signal:SIGQUIT".parse().unwrap();
        assert_eq!(
            all.for_container("anything"),
            Some(&DrainAction::Signal("SIGQUIT".into()))
        );
        // `=` inside an exec command is not a container name.
        let exec: DrainActions = "exec:env A=1 stop".parse().unwrap();
        assert!(matches!(exec.all, Some(DrainAction::Exec(_))));

        let per: DrainActions = "web=signal:SIGQUIT; api=http:8081/drain\nproxy=none"
            .parse()
            .unwrap();
        assert_eq!(
            per.for_container("web"),
            Some(&DrainAction::Signal("SIGQUIT".into()))
        );
        assert_eq!(per.for_container("proxy"), Some(&DrainAction::None));
        assert_eq!(per.for_container("other"), None);
        assert!("web=none;web=none".parse::<DrainActions>().is_err());
        assert!("web=sleep".parse::<DrainActions>().is_err());
    }

    fn action() -> impl Strategy<Value = DrainAction> {
        prop_oneof![
            prop::sample::select(
                SIGNALS
                    .iter()
                    .map(|(n, _)| (*n).to_owned())
                    .collect::<Vec<_>>()
            )
            .prop_map(DrainAction::Signal),
            prop::collection::vec("[ -~]{1,12}", 1..4).prop_map(DrainAction::Exec),
            (1u16.., "/[a-z/]{0,12}").prop_map(|(port, path)| DrainAction::Http { port, path }),
            Just(DrainAction::None),
        ]
    }

    proptest! {
        /// What the webhook writes into the environment is what the hook reads.
        #[test]
        fn display_reads_back(action in action()) {
            let mut expected = action.clone();
            if let DrainAction::Http { path, .. } = &mut expected
                && path.is_empty()
            {
                *path = crate::drain::DRAIN_DEFAULTS.http_path.to_owned();
            }
            prop_assert_eq!(action.to_string().parse::<DrainAction>(), Ok(expected));
        }

        /// Whatever the annotation holds, parsing returns (never panics).
        #[test]
        fn any_annotation_is_answered(value in "\\PC{0,64}") {
            let _ = value.parse::<DrainActions>();
        }
    }
}
