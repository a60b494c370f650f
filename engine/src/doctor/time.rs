//! Time sync: message `ts`, token `exp`/`nbf` (30 s of skew allowed) and presence
//! `lastSeen` come from the wall clock read at start-up; an unsynchronised clock drifts
//! away from the clients' and the token issuers'.

use super::{Finding, Host, Outcome};

/// What `timedatectl show -p NTPSynchronized --value` says.
pub fn parse_timedatectl(text: &str) -> Option<bool> {
    match text.trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// What `chronyc tracking` says: synchronised unless its leap status is "Not
/// synchronised".
pub fn parse_chrony(text: &str) -> Option<bool> {
    let line = text.lines().find(|l| l.starts_with("Leap status"))?;
    let status = line.split_once(':')?.1.trim();
    Some(status != "Not synchronised")
}

/// The `time_sync` check.
pub fn check_time_sync(host: &dyn Host) -> Outcome {
    let synced = host
        .run("timedatectl", &["show", "-p", "NTPSynchronized", "--value"])
        .and_then(|t| parse_timedatectl(&t))
        .or_else(|| {
            host.run("chronyc", &["tracking"])
                .and_then(|t| parse_chrony(&t))
        });
    match synced {
        Some(true) => Outcome::Ok("the system clock is synchronised (NTP)".into()),
        Some(false) => Outcome::Finding(Finding {
            problem: "the system clock is not synchronised".into(),
            change: "token exp/nbf (30 s skew allowed), message ts and presence lastSeen come from this clock; keep it synchronised".into(),
            commands: vec![
                "sudo timedatectl set-ntp true".into(),
                "sudo systemctl enable --now chrony   # or systemd-timesyncd".into(),
            ],
        }),
        None => Outcome::Unknown(
            "cannot tell (no timedatectl or chronyc here, e.g. in a container: the host's clock is used); check with `timedatectl status` on the host".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fake::FakeHost;

    #[test]
    fn outputs_parse() {
        assert_eq!(parse_timedatectl("yes\n"), Some(true));
        assert_eq!(parse_timedatectl("no"), Some(false));
        assert_eq!(parse_timedatectl(""), None);
        let chrony = "Reference ID    : A9FEA97B (169.254.169.123)\nLeap status     : Normal\n";
        assert_eq!(parse_chrony(chrony), Some(true));
        assert_eq!(
            parse_chrony("Leap status     : Not synchronised\n"),
            Some(false)
        );
    }

    #[test]
    fn unsynchronised_is_a_finding_and_no_tool_is_unknown() {
        assert!(matches!(
            check_time_sync(&FakeHost::tuned()),
            Outcome::Ok(_)
        ));
        assert!(matches!(
            check_time_sync(&FakeHost::untuned()),
            Outcome::Finding(_)
        ));
        let mut host = FakeHost::tuned();
        host.commands.clear();
        assert!(matches!(check_time_sync(&host), Outcome::Unknown(_)));
    }
}
