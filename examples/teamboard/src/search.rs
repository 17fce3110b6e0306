//! The node's own full-text index of issues (tantivy), kept in the replica volume and caught up from the database.
//!
//! Each commit stores, as its payload, the cursor it has caught up to (a transaction horizon, see `db::changes`), so
//! a node that restarts (or receives a copy of a peer's index through `capstan volume sync`) only indexes what
//! changed since. A missing or unreadable
//! index is rebuilt from the database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::db::IndexRow;
use crate::Error;

/// How the index came to be when the node started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An existing index was opened and caught up.
    Opened = 0,
    /// There was none; it was built from the database.
    Created = 1,
    /// The existing one could not be read; it was set aside and rebuilt.
    Rebuilt = 2,
}

impl Origin {
    /// The name shown in /status.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Opened => "opened",
            Origin::Created => "created",
            Origin::Rebuilt => "rebuilt",
        }
    }
}

struct Fields {
    id: Field,
    title: Field,
    text: Field,
    status: Field,
}

/// A node's search index.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    cursor: AtomicU64,
    origin: AtomicU8,
    dir: PathBuf,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let id = b.add_u64_field("id", INDEXED | STORED | FAST);
    let title = b.add_text_field("title", TEXT | STORED);
    let text = b.add_text_field("text", TEXT);
    let status = b.add_text_field("status", STRING);
    (b.build(), Fields { id, title, text, status })
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it when there is none and setting aside one that cannot be read.
    pub fn open(dir: &Path) -> Result<Arc<SearchIndex>, Error> {
        let (schema, fields) = schema();
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        let has_meta = dir.join("meta.json").exists();
        let (index, origin) = if has_meta {
            match Index::open_in_dir(dir) {
                Ok(i) if i.schema() == schema => (i, Origin::Opened),
                Ok(_) | Err(_) => {
                    let aside = dir.with_extension(format!("unreadable-{}", chrono::Utc::now().timestamp()));
                    tracing::warn!(dir = %dir.display(), aside = %aside.display(), "the search index cannot be read; rebuilding it from the database");
                    std::fs::rename(dir, &aside).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
                    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
                    (Index::create_in_dir(dir, schema.clone()).map_err(search_err)?, Origin::Rebuilt)
                }
            }
        } else {
            (Index::create_in_dir(dir, schema.clone()).map_err(search_err)?, Origin::Created)
        };
        let cursor = index.load_metas().ok().and_then(|m| m.payload).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
        let writer = index.writer_with_num_threads(1, 20_000_000).map_err(search_err)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(search_err)?;
        Ok(Arc::new(SearchIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            cursor: AtomicU64::new(cursor),
            origin: AtomicU8::new(origin as u8),
            dir: dir.to_path_buf(),
        }))
    }

    /// Where the next catch-up starts: every change by a transaction below it is indexed.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::SeqCst)
    }

    /// Moves the cursor forward without a commit (nothing changed; the persisted one is merely older).
    pub fn advance(&self, cursor: u64) {
        self.cursor.fetch_max(cursor, Ordering::SeqCst);
    }

    /// How the index came to be at start.
    pub fn origin(&self) -> Origin {
        match self.origin.load(Ordering::SeqCst) {
            0 => Origin::Opened,
            1 => Origin::Created,
            _ => Origin::Rebuilt,
        }
    }

    /// Where the index lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Documents in the index.
    pub fn docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Replaces the given issues' documents and commits with `cursor` as the payload (the cursor this pass started
    /// from, until the pass is complete). Blocking: call from a blocking thread.
    pub fn apply(&self, rows: &[IndexRow], cursor: u64) -> Result<(), Error> {
        let mut w = self.writer.lock().map_err(|_| Error::Search("index writer poisoned".into()))?;
        for r in rows {
            let id = r.id as u64;
            w.delete_term(Term::from_field_u64(self.fields.id, id));
            w.add_document(doc!(
                self.fields.id => id,
                self.fields.title => r.title.clone(),
                self.fields.text => r.text.clone(),
                self.fields.status => r.status.clone(),
            ))
            .map_err(search_err)?;
        }
        let mut commit = w.prepare_commit().map_err(search_err)?;
        commit.set_payload(&cursor.to_string());
        commit.commit().map_err(search_err)?;
        self.reader.reload().map_err(search_err)?;
        Ok(())
    }

    /// Issue ids matching `query` (tantivy's query syntax, parsed leniently), best first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<(i64, f32)>, Error> {
        let searcher = self.reader.searcher();
        let parser = QueryParser::for_index(&self.index, vec![self.fields.title, self.fields.text]);
        let (q, _errors) = parser.parse_query_lenient(query);
        let top = searcher.search(&q, &TopDocs::with_limit(limit.max(1)).order_by_score()).map_err(search_err)?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr).map_err(search_err)?;
            if let Some(id) = d.get_first(self.fields.id).and_then(|v| v.as_u64()) {
                out.push((id as i64, score));
            }
        }
        Ok(out)
    }
}

fn search_err(e: impl std::fmt::Display) -> Error {
    Error::Search(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, title: &str, text: &str) -> IndexRow {
        IndexRow { id, title: title.into(), text: text.into(), status: "open".into() }
    }

    #[test]
    fn an_index_is_created_reopened_with_its_cursor_and_rebuilt_when_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index");
        let idx = SearchIndex::open(&path).expect("open");
        assert_eq!((idx.origin(), idx.cursor(), idx.docs()), (Origin::Created, 0, 0));
        idx.apply(&[row(1, "Plankton supply", "dwindling"), row(2, "Soy harvest", "record year")], 0).expect("apply");
        idx.advance(42);
        // The same issue again replaces its document rather than adding one.
        idx.apply(&[row(1, "Plankton supply", "dwindling; comment: ask the ocean team")], 42).expect("apply");
        assert_eq!(idx.docs(), 2);
        assert_eq!(idx.search("ocean", 10).expect("search").iter().map(|h| h.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(idx.search("title:soy", 10).expect("search").len(), 1);
        assert!(idx.search("unbalanced \"quote", 10).is_ok(), "queries are parsed leniently");
        drop(idx);

        let idx = SearchIndex::open(&path).expect("reopen");
        assert_eq!((idx.origin(), idx.cursor(), idx.docs()), (Origin::Opened, 42, 2), "the cursor is the commit's");
        drop(idx);

        std::fs::write(path.join("meta.json"), b"{ not json").expect("corrupt");
        let idx = SearchIndex::open(&path).expect("rebuilt");
        assert_eq!((idx.origin(), idx.cursor(), idx.docs()), (Origin::Rebuilt, 0, 0));
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("index.unreadable-"))
            .collect();
        assert_eq!(aside.len(), 1, "the unreadable index is kept aside, not deleted");
    }
}
