"""The audit app's pages (views, forms, urls)."""
