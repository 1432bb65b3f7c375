//! A story as a person writes it: Markdown whose first `# Heading` is the title and
//! whose rest is the body. Parsing is strict about what would make a useless work
//! item (no title, no text, binary junk) and says how to fix each case.

/// The largest body accepted, in bytes. A story is prose, not an attachment.
pub const MAX_STORY_BYTES: usize = 256 * 1024;
/// The longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Story {
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoryError {
    #[error("the story is empty; write a '# Title' line followed by the story text")]
    Empty,
    #[error("the story has no title; start it with a '# Title' line or pass a title explicitly")]
    NoTitle,
    #[error("the title is empty; give the story a title of 1-{MAX_TITLE_CHARS} characters")]
    EmptyTitle,
    #[error("the title is {0} characters long; shorten it to at most {MAX_TITLE_CHARS}")]
    TitleTooLong(usize),
    #[error("the title must be one line without control characters")]
    TitleNotOneLine,
    #[error("the story is {0} bytes; stories are limited to {MAX_STORY_BYTES} bytes, move attachments to the repository")]
    TooLarge(usize),
    #[error("the story contains a NUL byte; it looks like a binary file, not Markdown")]
    Binary,
}

impl Story {
    /// Parses Markdown. `title_override`, when given, is the title and the whole text
    /// is the body (a leading `# Heading` is then kept as part of the body).
    pub fn parse(markdown: &str, title_override: Option<&str>) -> Result<Story, StoryError> {
        if markdown.len() > MAX_STORY_BYTES {
            return Err(StoryError::TooLarge(markdown.len()));
        }
        if markdown.contains('\0') {
            return Err(StoryError::Binary);
        }
        let text = markdown.trim_start_matches('\u{feff}');
        if let Some(title) = title_override {
            return Story::new(title, text);
        }
        if text.trim().is_empty() {
            return Err(StoryError::Empty);
        }
        let mut lines = text.lines();
        let first = lines
            .by_ref()
            .find(|line| !line.trim().is_empty())
            .expect("a non-blank text has a non-blank line");
        let heading = first.trim_start();
        let Some(title) = heading
            .strip_prefix("# ")
            .or_else(|| (heading == "#").then_some(""))
        else {
            return Err(StoryError::NoTitle);
        };
        let body: Vec<&str> = lines.collect();
        Story::new(title, &body.join("\n"))
    }

    /// Builds a story from a separate title and body, as the API and MCP receive them.
    pub fn new(title: &str, body: &str) -> Result<Story, StoryError> {
        let title = title.trim().trim_end_matches('#').trim();
        if title.is_empty() {
            return Err(StoryError::EmptyTitle);
        }
        if title.chars().any(char::is_control) {
            return Err(StoryError::TitleNotOneLine);
        }
        let chars = title.chars().count();
        if chars > MAX_TITLE_CHARS {
            return Err(StoryError::TitleTooLong(chars));
        }
        if body.len() > MAX_STORY_BYTES {
            return Err(StoryError::TooLarge(body.len()));
        }
        if body.contains('\0') {
            return Err(StoryError::Binary);
        }
        Ok(Story {
            title: title.to_owned(),
            body: body.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<(String, String), StoryError> {
        Story::parse(text, None).map(|s| (s.title, s.body))
    }

    #[test]
    fn title_from_first_heading() {
        assert_eq!(
            parsed("# Add login\n\nUsers log in with email.\n"),
            Ok(("Add login".into(), "Users log in with email.".into()))
        );
        assert_eq!(
            parsed("\n\n  # Spaced #\nbody"),
            Ok(("Spaced".into(), "body".into()))
        );
        assert_eq!(
            parsed("# Only a title"),
            Ok(("Only a title".into(), "".into()))
        );
        assert_eq!(parsed("\u{feff}# BOM\nx"), Ok(("BOM".into(), "x".into())));
    }

    #[test]
    fn refusals() {
        assert_eq!(parsed(""), Err(StoryError::Empty));
        assert_eq!(parsed(" \n\t\n"), Err(StoryError::Empty));
        assert_eq!(parsed("no heading here"), Err(StoryError::NoTitle));
        assert_eq!(parsed("## second level"), Err(StoryError::NoTitle));
        assert_eq!(parsed("#\nbody"), Err(StoryError::EmptyTitle));
        assert_eq!(parsed("# a\0b"), Err(StoryError::Binary));
        let long = format!("# {}", "x".repeat(MAX_TITLE_CHARS + 1));
        assert_eq!(
            parsed(&long),
            Err(StoryError::TitleTooLong(MAX_TITLE_CHARS + 1))
        );
        let huge = "x".repeat(MAX_STORY_BYTES + 1);
        assert_eq!(
            parsed(&huge),
            Err(StoryError::TooLarge(MAX_STORY_BYTES + 1))
        );
    }

    #[test]
    fn explicit_title_keeps_whole_text_as_body() {
        let story = Story::parse("# Heading\ntext", Some("Given")).unwrap();
        assert_eq!(story.title, "Given");
        assert_eq!(story.body, "# Heading\ntext");
        assert_eq!(Story::parse("x", Some("  ")), Err(StoryError::EmptyTitle));
        assert_eq!(Story::new("a\nb", ""), Err(StoryError::TitleNotOneLine));
    }
}
