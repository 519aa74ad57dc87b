"""Who is acting: the principal behind a console session, an admin API call or a chat approval."""
