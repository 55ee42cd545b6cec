"""Readers: each turns one kind of essay source (Markdown file, scraped page, feed) into a ParsedEssay."""
