"""Model engines behind the services: one interface (`base.Engine`), two backends."""
