//! apt-get as xtask uses it: installs what is missing and never removes or
//! downgrades an installed package.
//!
//! Every install is simulated first (`apt-get install -s`). When apt would
//! resolve a conflict by removing an installed package (`Remv` in the
//! simulation), xtask installs nothing and says which packages conflict and
//! what the user can do; the real install also runs with `--no-remove`, so
//! that apt refuses rather than removes should the two runs disagree.

use crate::proc::{self, Wait};
use std::process::Command;

/// Whether dpkg has `pkg` installed.
pub fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Runs `apt-get ARGS` non-interactively, its output passed through.
pub fn apt_get(args: &[&str]) -> Result<(), String> {
    out!("    $ apt-get {}", args.join(" "));
    let mut cmd = Command::new("apt-get");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    match proc::run(&mut cmd, None) {
        Ok(Wait::Exited(s)) if s.success() => Ok(()),
        Ok(Wait::Exited(s)) => Err(format!(
            "apt-get {} failed: {}",
            args[0],
            proc::describe(&s)
        )),
        Ok(_) => Err("apt-get was interrupted".into()),
        Err(e) => Err(format!("cannot run apt-get: {e}")),
    }
}

/// A package and a version, as a simulation names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub name: String,
    pub version: String,
}

/// What `apt-get install -s` would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `Inst` lines: new packages and upgrades, with the version apt picks.
    pub installs: Vec<Versioned>,
    /// `Remv` lines: installed packages apt would remove, with the
    /// installed version.
    pub removals: Vec<Versioned>,
}

/// Parses the output of `apt-get install -s`: `Inst NAME [OLD] (NEW ...)`
/// and `Remv NAME [OLD]` lines (`Conf` lines repeat the installs).
pub fn parse_simulation(text: &str) -> Plan {
    let mut plan = Plan::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (kind, Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let rest = rest.join(" ");
        let bracketed = |open: char, close: char| {
            rest.split_once(open)
                .and_then(|(_, r)| r.split_once(close))
                .map(|(v, _)| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        match kind {
            Some("Inst") => plan.installs.push(Versioned {
                name: name.to_string(),
                version: bracketed('(', ')'),
            }),
            Some("Remv") => plan.removals.push(Versioned {
                name: name.to_string(),
                version: bracketed('[', ']'),
            }),
            _ => {}
        }
    }
    plan
}

/// `apt-get install -s --no-install-recommends PKGS`, parsed. Runs without
/// root. apt prints the plan even when it would remove packages.
pub fn simulate(pkgs: &[&str]) -> Result<Plan, String> {
    let out = Command::new("apt-get")
        .args(["install", "-s", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr
            .lines()
            .filter(|l| l.starts_with("E:"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "apt-get install -s {} failed: {}",
            pkgs.join(" "),
            if why.is_empty() {
                proc::describe(&out.status)
            } else {
                why
            }
        ));
    }
    Ok(parse_simulation(&String::from_utf8_lossy(&out.stdout)))
}

/// One relation of a `Depends`/`Breaks`/`Conflicts` field: the package
/// name and the whole relation as written (`qemu-system-common (<< 1:8.0)`).
fn relations(field: &str) -> Vec<(String, String)> {
    field
        .split([',', '|'])
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let name = r
                .split([' ', '(', ':'])
                .next()
                .unwrap_or(r)
                .trim()
                .to_string();
            (name, r.to_string())
        })
        .collect()
}

/// The `Breaks` and `Conflicts` fields of one `apt-cache show` record (or
/// of dpkg's record, printed as those two fields).
fn breaks_field(record: &str) -> String {
    record
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Breaks:")
                .or_else(|| l.strip_prefix("Conflicts:"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `Breaks` and `Conflicts` relations of the installed `pkg`.
fn installed_breaks(pkg: &str) -> Vec<(String, String)> {
    Command::new("dpkg-query")
        .args(["-W", "-f=Breaks: ${Breaks}\nConflicts: ${Conflicts}\n", pkg])
        .output()
        .map(|o| relations(&breaks_field(&String::from_utf8_lossy(&o.stdout))))
        .unwrap_or_default()
}

/// The `Breaks` and `Conflicts` relations of each package of `plan`, at the
/// version apt would install (one `apt-cache show` for all).
fn planned_breaks(plan: &Plan) -> Vec<(&Versioned, Vec<(String, String)>)> {
    let args: Vec<String> = plan
        .installs
        .iter()
        .map(|i| format!("{}={}", i.name, i.version))
        .collect();
    let text = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(&args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split("\n\n")
        .filter_map(|record| {
            let name = record
                .lines()
                .find_map(|l| l.strip_prefix("Package:"))?
                .trim();
            let i = plan.installs.iter().find(|i| i.name == name)?;
            Some((i, relations(&breaks_field(record))))
        })
        .collect()
}

/// Whether `version` satisfies a relation such as `pkg (<< 1:8.0)` (one
/// without a version constraint always does), by `dpkg --compare-versions`.
fn relation_holds(relation: &str, version: &str) -> bool {
    let Some(constraint) = relation
        .split_once('(')
        .and_then(|(_, c)| c.split_once(')'))
        .map(|(c, _)| c.trim())
    else {
        return true;
    };
    let Some((op, against)) = constraint.split_once(' ') else {
        return true;
    };
    let op = match op {
        "<<" => "lt",
        "<=" => "le",
        "=" => "eq",
        ">=" => "ge",
        ">>" => "gt",
        _ => return true,
    };
    Command::new("dpkg")
        .args(["--compare-versions", version, op, against.trim()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `apt-cache policy` output says that the installed version comes
/// from no configured source (only dpkg's status file knows it).
pub fn installed_from_nowhere(policy: &str) -> bool {
    let mut lines = policy.lines().skip_while(|l| !l.starts_with(" *** "));
    if lines.next().is_none() {
        return false;
    }
    let sources: Vec<&str> = lines
        .take_while(|l| l.starts_with("        "))
        .map(str::trim)
        .collect();
    !sources.is_empty() && sources.iter().all(|s| s.ends_with("/var/lib/dpkg/status"))
}

/// Why apt would remove each package of `plan.removals` to install `pkgs`,
/// and what the user can do: lines for an error message.
pub fn explain_removals(pkgs: &[&str], plan: &Plan) -> String {
    let mut lines = vec![format!(
        "installing {} would REMOVE installed packages, which xtask never does:",
        pkgs.join(" ")
    )];
    let planned = planned_breaks(plan);
    for r in &plan.removals {
        let mut why = Vec::new();
        for (name, rel) in installed_breaks(&r.name) {
            if let Some(i) = plan
                .installs
                .iter()
                .find(|i| i.name == name && relation_holds(&rel, &i.version))
            {
                why.push(format!(
                    "{} {} (installed) breaks {rel}, and apt would install {} {}",
                    r.name, r.version, i.name, i.version
                ));
            }
        }
        for (i, breaks) in &planned {
            for (name, rel) in breaks {
                if *name == r.name && relation_holds(rel, &r.version) {
                    why.push(format!("{} {} breaks {rel}", i.name, i.version));
                }
            }
        }
        if why.is_empty() {
            why.push("apt finds no other way to satisfy the dependencies".into());
        }
        let origin = Command::new("apt-cache")
            .args(["policy", &r.name])
            .output()
            .ok()
            .filter(|o| installed_from_nowhere(&String::from_utf8_lossy(&o.stdout)))
            .map(|_| {
                format!(
                    " ({} {} comes from a source no longer configured)",
                    r.name, r.version
                )
            })
            .unwrap_or_default();
        lines.push(format!(
            "  - {} {}: {}{origin}",
            r.name,
            r.version,
            why.join("; ")
        ));
    }
    let removed: Vec<&str> = plan.removals.iter().map(|r| r.name.as_str()).collect();
    lines.push(format!(
        "  what to do: add an apt source with versions of {} that fit {} (e.g. the one it \
         came from), or install them yourself if losing {} is acceptable \
         (apt-get install --no-install-recommends {})",
        pkgs.join(" "),
        removed.join(" "),
        removed.join(" "),
        pkgs.join(" ")
    ));
    lines.join("\n")
}

/// Installs the missing ones of `pkgs` (as root): `apt-get update`, a
/// simulation that must remove nothing, then `apt-get install
/// --no-remove`. Without root, says what to install.
pub fn install(pkgs: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !proc::is_root() {
        return Err(format!(
            "missing Debian packages; install with: sudo apt-get install --no-install-recommends {}",
            missing.join(" ")
        ));
    }
    out!("    installing {}", missing.join(" "));
    apt_get(&["update"])?;
    let plan = simulate(&missing)?;
    if !plan.removals.is_empty() {
        return Err(explain_removals(&missing, &plan));
    }
    let mut args = vec!["install", "-y", "--no-install-recommends", "--no-remove"];
    args.extend(&missing);
    apt_get(&args)?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !installed(p)).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after apt-get: {}", still.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lists_installs_and_removals() {
        let text = "\
NOTE: This is only a simulation!
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst ipxe-qemu (1.0.0+git-20190125.36a4c85-5.1 Debian:12.15/oldstable [all])
Inst libc6 [2.36-9+deb12u13] (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])
Conf ipxe-qemu (1.0.0+git-20190125.36a4c85-5.1 Debian:12.15/oldstable [all])
";
        let plan = parse_simulation(text);
        assert_eq!(
            plan.removals,
            [Versioned {
                name: "qemu-utils".into(),
                version: "1:10.0.2+ds-2+deb13u1~bpo12+1".into()
            }]
        );
        let installs: Vec<(&str, &str)> = plan
            .installs
            .iter()
            .map(|i| (i.name.as_str(), i.version.as_str()))
            .collect();
        assert_eq!(
            installs,
            [
                ("ipxe-qemu", "1.0.0+git-20190125.36a4c85-5.1"),
                ("libc6", "2.36-9+deb12u14")
            ]
        );
    }

    #[test]
    fn simulation_without_removals() {
        let plan = parse_simulation("Inst flex (2.6.4-8.2 Debian:12.15/oldstable [amd64])\n");
        assert!(plan.removals.is_empty());
        assert_eq!(plan.installs.len(), 1);
        assert!(parse_simulation("").installs.is_empty());
    }

    #[test]
    fn relations_name_their_package() {
        let r = relations("qemu-system-common (<< 1:8.0+dfsg-5~), libfoo:amd64 | libbar,");
        let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["qemu-system-common", "libfoo", "libbar"]);
        assert_eq!(r[0].1, "qemu-system-common (<< 1:8.0+dfsg-5~)");
    }

    #[test]
    fn relations_hold_by_version() {
        let rel = "qemu-system-common (<< 1:8.0+dfsg-5~)";
        if proc::which("dpkg").is_none() {
            return;
        }
        assert!(relation_holds(rel, "1:7.2+dfsg-7+deb12u18+b3"));
        assert!(!relation_holds(rel, "1:10.0.2+ds-2"));
        assert!(!relation_holds(
            "qemu-utils (<< 1:3.1+dfsg-3~)",
            "1:10.0.2+ds-2"
        ));
        assert!(relation_holds("seabios", "1.16.2-1"));
    }

    #[test]
    fn installed_version_without_a_source() {
        let orphan = "\
qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
";
        assert!(installed_from_nowhere(orphan));
        let sourced = "\
  Version table:
 *** 1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
";
        assert!(!installed_from_nowhere(sourced));
        assert!(!installed_from_nowhere(
            "qemu-utils:\n  Installed: (none)\n"
        ));
    }
}
