//! Routing of prompts to adapters. Filled in by the routing tier; empty for now.
