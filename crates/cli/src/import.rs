//! `kurir users import --account NAME FILE.csv`: creates and updates an
//! account's users from a CSV file, streamed (never read whole), validated
//! row by row with the API's rules, upserted a batch at a time
//! (`kurir_store::import`). A bad row is reported with its line and reason
//! and the others go on; importing the same file again changes nothing.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, IsTerminal},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};
use csv::ByteRecord;
use indicatif::{ProgressBar, ProgressStyle};
use kurir_core::{
    PhoneNumber, ProfileImage, StatusText, UserId, UserName, ValidationErrors, config::DatabaseArgs,
};
use kurir_store::{
    import::{self, ImportRow, RowOutcome},
    users::NewUser,
};

use crate::Failure;

/// The columns a file must have, in any order.
pub const COLUMNS: [&str; 5] = ["id", "name", "phone_number", "profile_image", "status"];

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create or update an account's users from a CSV file with the header
    /// id,name,phone_number,profile_image,status. Exit 0: every row
    /// imported; 1: some were rejected (listed on stderr); 2: bad arguments.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The account whose users these are; it must exist (`kurir keys create
    /// --account NAME` creates one).
    #[arg(long)]
    account: String,
    /// Also write the rejected rows (line,id,reason) to this CSV file.
    #[arg(long, value_name = "FILE.csv")]
    rejects: Option<PathBuf>,
    /// Rows per upsert statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
    /// The CSV file (UTF-8, comma-separated, with a header).
    #[arg(value_name = "FILE.csv")]
    file: PathBuf,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

impl Summary {
    fn imported(&self) -> u64 {
        self.created + self.updated + self.unchanged
    }
}

pub async fn run(command: UsersCommand, database: &DatabaseArgs) -> Result<(), Failure> {
    match command {
        UsersCommand::Import(args) => import_file(args, database).await,
    }
}

/// Where each column is in the file's records.
#[derive(Debug, Clone, Copy)]
struct Columns {
    id: usize,
    name: usize,
    phone_number: usize,
    profile_image: usize,
    status: usize,
    count: usize,
}

/// Checks the header: every column named once, none missing, none unknown.
fn columns(header: &ByteRecord) -> Result<Columns, String> {
    let mut found: HashMap<&str, usize> = HashMap::new();
    for (index, raw) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(raw);
        // A spreadsheet's byte-order mark and padding are no part of the name.
        let name = name.trim_start_matches('\u{feff}').trim();
        let Some(known) = COLUMNS.iter().find(|column| **column == name) else {
            return Err(format!(
                "unknown column {name:?} in the header (the columns are {})",
                COLUMNS.join(",")
            ));
        };
        if found.insert(known, index).is_some() {
            return Err(format!("column {known:?} appears twice in the header"));
        }
    }
    let at = |column: &str| {
        found.get(column).copied().ok_or_else(|| {
            format!(
                "the header has no column {column:?} (the columns are {}; profile_image and status may be left empty)",
                COLUMNS.join(",")
            )
        })
    };
    Ok(Columns {
        id: at("id")?,
        name: at("name")?,
        phone_number: at("phone_number")?,
        profile_image: at("profile_image")?,
        status: at("status")?,
        count: header.len(),
    })
}

/// Field `index` of `record` as text; not UTF-8 is `name`'s error.
fn text<'r>(
    record: &'r ByteRecord,
    index: usize,
    name: &str,
    errors: &mut ValidationErrors,
) -> Option<&'r str> {
    match std::str::from_utf8(record.get(index).unwrap_or_default()) {
        Ok(text) => Some(text),
        Err(_) => {
            errors.push(kurir_core::FieldError::new(name, "is not valid UTF-8"));
            None
        }
    }
}

/// One record as a user, by the rules the API applies to `POST /v1/users`;
/// every bad field at once, as `field: reason; field: reason`.
fn parse_row(record: &ByteRecord, columns: &Columns) -> Result<NewUser, String> {
    if record.len() != columns.count {
        return Err(format!(
            "has {} fields, the header has {}",
            record.len(),
            columns.count
        ));
    }
    let mut errors = ValidationErrors::default();
    let raw = (
        text(record, columns.id, "id", &mut errors),
        text(record, columns.name, "name", &mut errors),
        text(record, columns.phone_number, "phone_number", &mut errors),
        text(record, columns.profile_image, "profile_image", &mut errors),
        text(record, columns.status, "status", &mut errors),
    );
    let id = raw.0.and_then(|raw| errors.check(UserId::parse("id", raw)));
    let name = raw
        .1
        .and_then(|raw| errors.check(UserName::parse("name", raw)));
    let phone = raw
        .2
        .and_then(|raw| errors.check(PhoneNumber::parse("phone_number", raw)));
    let image = raw.3.and_then(|raw| match raw {
        "" => Some(None),
        raw => errors
            .check(ProfileImage::parse("profile_image", raw))
            .map(Some),
    });
    let status = raw
        .4
        .and_then(|raw| errors.check(StatusText::parse_initial("status", raw)));
    match (id, name, phone, image, status) {
        (Some(id), Some(name), Some(phone_number), Some(profile_image), Some(status))
            if errors.is_empty() =>
        {
            Ok(NewUser {
                id,
                name,
                phone_number,
                profile_image,
                status,
            })
        }
        _ => Err(errors
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Says how far the import is: a bar at a terminal, a line every few
/// seconds for a log.
enum Progress {
    Bar(ProgressBar),
    Lines { last: Instant, size: u64 },
}

const LINE_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    fn new(size: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(size);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            ) {
                bar.set_style(style);
            }
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                last: Instant::now(),
                size,
            }
        }
    }

    fn update(&mut self, byte: u64, summary: &Summary) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(byte);
                bar.set_message(format!(
                    "{} rows, {} rejected",
                    summary.read, summary.rejected
                ));
            }
            Progress::Lines { last, size } => {
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let percent = (byte * 100).checked_div(*size).unwrap_or(100);
                    eprintln!(
                        "import: {percent}% of the file, {} rows read, {} imported, {} rejected",
                        summary.read,
                        summary.imported(),
                        summary.rejected
                    );
                }
            }
        }
    }

    /// Prints a line without tearing the bar.
    fn say(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| eprintln!("{line}")),
            Progress::Lines { .. } => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// The rejected rows, on stderr and (with `--rejects`) in a CSV file.
struct Rejects {
    file: Option<(csv::Writer<File>, PathBuf)>,
}

impl Rejects {
    fn open(path: Option<&Path>) -> Result<Self, Failure> {
        let Some(path) = path else {
            return Ok(Self { file: None });
        };
        let mut writer = csv::Writer::from_path(path).map_err(|err| {
            Failure::Config(format!("cannot write --rejects {}: {err}", path.display()))
        })?;
        writer
            .write_record(["line", "id", "reason"])
            .map_err(|err| Failure::Config(format!("cannot write {}: {err}", path.display())))?;
        Ok(Self {
            file: Some((writer, path.to_owned())),
        })
    }

    fn add(
        &mut self,
        progress: &Progress,
        line: u64,
        id: &str,
        reason: &str,
    ) -> Result<(), Failure> {
        progress.say(&format!("line {line}: id {id:?}: {reason}"));
        if let Some((writer, path)) = &mut self.file {
            writer
                .write_record([line.to_string().as_str(), id, reason])
                .map_err(|err| {
                    Failure::Runtime(format!("cannot write {}: {err}", path.display()))
                })?;
        }
        Ok(())
    }

    fn close(self) -> Result<(), Failure> {
        if let Some((mut writer, path)) = self.file {
            writer.flush().map_err(|err| {
                Failure::Runtime(format!("cannot write {}: {err}", path.display()))
            })?;
        }
        Ok(())
    }
}

/// The id of a record as given, for a rejected row's report.
fn raw_id(record: &ByteRecord, columns: &Columns) -> String {
    String::from_utf8_lossy(record.get(columns.id).unwrap_or_default()).into_owned()
}

async fn import_file(args: ImportArgs, database: &DatabaseArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let account_name = args.account.trim();
    if account_name.is_empty() || account_name.len() > 200 {
        return Err(Failure::Config(
            "--account must be 1 to 200 characters".into(),
        ));
    }
    let path = &args.file;
    let file = File::open(path)
        .map_err(|err| Failure::Config(format!("cannot read {}: {err}", path.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 16, file));
    let header = reader
        .byte_headers()
        .map_err(|err| Failure::Config(format!("cannot read {}: {err}", path.display())))?
        .clone();
    if header.is_empty() {
        return Err(Failure::Config(format!(
            "{} is empty: it needs a header line {}",
            path.display(),
            COLUMNS.join(",")
        )));
    }
    let columns =
        columns(&header).map_err(|why| Failure::Config(format!("{}: {why}", path.display())))?;
    let mut rejects = Rejects::open(args.rejects.as_deref())?;

    let db = kurir_store::Db::connect_lazily(database)?;
    let client = db
        .client()
        .await
        .map_err(|err| Failure::Runtime(format!("cannot reach Postgres: {err}")))?;
    let account = db
        .timed(import::account_named(&client, account_name))
        .await
        .map_err(|err| Failure::Runtime(err.to_string()))?
        .ok_or_else(|| {
            Failure::Config(format!(
                "no account named {account_name:?} (kurir accounts list shows them; kurir keys create --account {account_name} creates it)"
            ))
        })?;

    let mut summary = Summary::default();
    let mut progress = Progress::new(size);
    // The first line of each id and phone number imported so far: a repeat
    // later in the file is rejected, never applied over the first.
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut phones: HashMap<String, u64> = HashMap::new();
    let batch_size = args.batch_size as usize;
    let mut batch: Vec<ImportRow> = Vec::with_capacity(batch_size);
    let mut record = ByteRecord::new();
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|err| {
            Failure::Runtime(format!(
                "cannot read {} after line {}: {err}; the rows before it are imported, and importing the file again is safe",
                path.display(),
                last_line(&batch, &summary)
            ))
        })?;
        if more {
            let line = record.position().map_or(0, csv::Position::line);
            summary.read += 1;
            let parsed = parse_row(&record, &columns).and_then(|user| {
                repeated(&ids, user.id.as_str(), "id")?;
                repeated(&phones, user.phone_number.as_str(), "phone_number")?;
                ids.insert(user.id.as_str().to_owned(), line);
                phones.insert(user.phone_number.as_str().to_owned(), line);
                Ok(user)
            });
            match parsed {
                Ok(user) => batch.push(ImportRow { line, user }),
                Err(reason) => {
                    summary.rejected += 1;
                    rejects.add(&progress, line, &raw_id(&record, &columns), &reason)?;
                }
            }
        }
        if batch.len() >= batch_size || (!more && !batch.is_empty()) {
            let outcomes = db
                .timed(import::upsert_users(&client, account, &batch))
                .await
                .map_err(|err| {
                    Failure::Runtime(format!(
                        "import stopped at line {}: {err}; {} rows before it are imported, and importing the file again is safe",
                        batch.first().map_or(0, |row| row.line),
                        summary.imported()
                    ))
                })?;
            for (row, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    RowOutcome::Created => summary.created += 1,
                    RowOutcome::Updated => summary.updated += 1,
                    RowOutcome::Unchanged => summary.unchanged += 1,
                    RowOutcome::Rejected(reason) => {
                        summary.rejected += 1;
                        rejects.add(&progress, row.line, row.user.id.as_str(), &reason)?;
                    }
                }
            }
            batch.clear();
        }
        let byte = record.position().map_or(0, csv::Position::byte);
        progress.update(byte, &summary);
        if !more {
            break;
        }
    }
    progress.finish();
    rejects.close()?;
    print_summary(&summary, started.elapsed());
    tracing::info!(
        account = account_name,
        read = summary.read,
        created = summary.created,
        updated = summary.updated,
        unchanged = summary.unchanged,
        rejected = summary.rejected,
        "users imported"
    );
    if summary.rejected > 0 {
        return Err(Failure::Runtime(format!(
            "{} of {} rows were rejected (listed above{})",
            summary.rejected,
            summary.read,
            match &args.rejects {
                Some(path) => format!(" and in {}", path.display()),
                None => String::new(),
            }
        )));
    }
    Ok(())
}

/// Says which earlier line of the file imported `value` already, if one did.
fn repeated(seen: &HashMap<String, u64>, value: &str, field: &str) -> Result<(), String> {
    match seen.get(value) {
        Some(first) => Err(format!(
            "{field}: {value} is on line {first} already (each may appear once in a file)"
        )),
        None => Ok(()),
    }
}

/// The last line read, for an error that stops the import.
fn last_line(batch: &[ImportRow], summary: &Summary) -> String {
    match batch.last() {
        Some(row) => row.line.to_string(),
        None => format!("row {}", summary.read),
    }
}

#[allow(clippy::print_stdout)]
fn print_summary(summary: &Summary, took: Duration) {
    let rows = [
        ("read", summary.read.to_string()),
        ("created", summary.created.to_string()),
        ("updated", summary.updated.to_string()),
        ("unchanged", summary.unchanged.to_string()),
        ("rejected", summary.rejected.to_string()),
        ("seconds", format!("{:.2}", took.as_secs_f64())),
    ];
    for (name, value) in rows {
        println!("{name:<10} {value:>10}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> ByteRecord {
        ByteRecord::from(fields.to_vec())
    }

    #[test]
    fn the_header_names_a_missing_or_unknown_column() {
        let err = columns(&record(&["id", "name", "phone_number", "status"])).unwrap_err();
        assert!(err.contains("no column \"profile_image\""), "{err}");
        let err =
            columns(&record(&["id", "name", "phone", "profile_image", "status"])).unwrap_err();
        assert!(err.contains("unknown column \"phone\""), "{err}");
        let err = columns(&record(&[
            "id",
            "id",
            "name",
            "phone_number",
            "profile_image",
            "status",
        ]))
        .unwrap_err();
        assert!(err.contains("\"id\" appears twice"), "{err}");
        // Any order, padded, after a byte-order mark.
        let found = columns(&record(&[
            "\u{feff}status",
            " phone_number",
            "name",
            "id",
            "profile_image",
        ]))
        .unwrap();
        assert_eq!((found.status, found.id, found.count), (0, 3, 5));
    }

    #[test]
    fn rows_follow_the_apis_rules_and_say_every_bad_field() {
        let columns = columns(&record(&COLUMNS)).unwrap();
        let user = parse_row(&record(&["u-1", "Ana", "+6281234567", "", ""]), &columns).unwrap();
        assert_eq!(user.profile_image, None);
        assert_eq!(user.status.as_str(), "");
        let err = parse_row(&record(&["u 1", "", "0812", "ftp://x", ""]), &columns).unwrap_err();
        for field in ["id:", "name:", "phone_number:", "profile_image:"] {
            assert!(err.contains(field), "{field} in {err}");
        }
        let err = parse_row(&record(&["u-1", "Ana"]), &columns).unwrap_err();
        assert_eq!(err, "has 2 fields, the header has 5");
        let err = parse_row(
            &record(&["u-1", "Ana", "+6281234567", "", &"x".repeat(140)]),
            &columns,
        )
        .unwrap_err();
        assert!(err.starts_with("status:"), "{err}");
    }
}
